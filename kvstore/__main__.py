"""``python -m kvstore``: run the KV block store as its own process."""
import sys

from kvstore.cli import main

sys.exit(main())

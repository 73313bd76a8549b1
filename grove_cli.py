"""The ``grove`` command: ``grove bench ...``, ``grove run ...`` (the local stack), ``grove serve MODEL ...``
(the local stack from a ``vllm serve`` command line), ``grove generate ...``."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: grove {bench,run,serve,generate} [args...]"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)  # noqa: T201
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        from bench.cli import main as bench_main

        return bench_main(rest)
    if cmd == "run":
        from launcher.__main__ import main as run_main

        return run_main(rest)
    if cmd == "serve":
        from launcher.vllm_serve import main as serve_main

        return serve_main(rest)
    if cmd == "generate":
        from engine.cli import main as gen_main

        return gen_main(rest)
    print(f"unknown command {cmd!r}\n{usage}", file=sys.stderr)  # noqa: T201
    return 2


if __name__ == "__main__":
    sys.exit(main())

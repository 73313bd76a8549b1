"""HumanEval: 164 Python problems; the prompt (signature and docstring) is a code-completion request."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from bench.datasets.files import humaneval_path
from bench.records import Prompt


def load_problems(path: Path | None = None) -> list[dict[str, Any]]:
    with gzip.open(path or humaneval_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def completion_prompts(path: Path | None = None) -> list[Prompt]:
    return [Prompt(id=p["task_id"], text=p["prompt"]) for p in load_problems(path)]

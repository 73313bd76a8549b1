"""Benchmark datasets, each loaded from the file its package ships: ``load_prompts(spec)``."""
from __future__ import annotations

from typing import Callable

from bench.datasets.code_edit import code_edit_prompts
from bench.datasets.humaneval import completion_prompts
from bench.datasets.json_extract import extract_prompts
from bench.datasets.jsonl import jsonl_prompts
from bench.datasets.multiturn import multiturn_prompts
from bench.datasets.sharegpt import first_turn_prompts
from bench.datasets.shakespeare import quote_prompts
from bench.records import Prompt

# name -> (loader, one-line description for --help)
DATASETS: dict[str, tuple[Callable[[], list[Prompt]], str]] = {
    "sharegpt": (first_turn_prompts, "ShareGPT first user turns (chat)"),
    "humaneval": (completion_prompts, "HumanEval prompts (code completion)"),
    "code-edit": (code_edit_prompts, "rewrite a HumanEval solution: rename / type hints / docstring (chat, copy-heavy)"),
    "shakespeare-quote": (quote_prompts, "quote lines from a 64-line Shakespeare passage (chat, long prompts, copy-heavy)"),
    "multiturn": (multiturn_prompts, "ShareGPT conversations replayed turn by turn (chat, shared prefixes)"),
    "json-extract": (extract_prompts, "a HumanEval function's name, parameters and docstring as JSON (chat, copy-heavy; "
                                      "for structured output)"),
}
JSONL_PREFIX = "jsonl:"


def load_prompts(spec: str) -> list[Prompt]:
    """``spec`` is a name in DATASETS or ``jsonl:PATH``."""
    if spec.startswith(JSONL_PREFIX):
        return jsonl_prompts(spec[len(JSONL_PREFIX):])
    if spec not in DATASETS:
        raise ValueError(f"unknown dataset {spec!r}; choose from {sorted(DATASETS)} or jsonl:PATH")
    return DATASETS[spec][0]()


__all__ = ["DATASETS", "JSONL_PREFIX", "load_prompts"]

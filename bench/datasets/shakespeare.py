"""Answer-by-quoting prompts over Shakespeare passages: long prompts whose answers copy from them.

The text is cut into consecutive passages of ``lines`` lines, numbered; each passage gets one
question (alternating by passage): quote lines a..b, or quote the line containing a word and the
lines after it. Questions are drawn from a generator seeded by the passage index (reproducible).
"""
from __future__ import annotations

import random
from pathlib import Path

from bench.datasets.files import shakespeare_path
from bench.records import Prompt

LINES_PER_PASSAGE = 64


def read_lines(path: Path | None = None) -> list[str]:
    with open(path or shakespeare_path(), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _question(passage: list[str], index: int) -> str:
    rng = random.Random(index)
    if index % 2 == 0:
        span = rng.randint(4, 12)
        first = rng.randint(1, max(1, len(passage) - span + 1))
        last = min(len(passage), first + span - 1)
        return (f"Quote lines {first} to {last} of the passage exactly, word for word, one line per "
                "line, without the line numbers.")
    candidates = [(i, w) for i, line in enumerate(passage) for w in line.split() if len(w) >= 6 and w.isalpha()]
    if not candidates:
        return "Quote the first five lines of the passage exactly, word for word."
    _, word = rng.choice(candidates)
    after = rng.randint(2, 6)
    return (f'Quote, word for word, the first line of the passage that contains the word "{word}", '
            f"followed by the {after} lines after it.")


def quote_prompts(path: Path | None = None, lines: int = LINES_PER_PASSAGE) -> list[Prompt]:
    """One prompt per complete passage of ``lines`` lines (a short tail is dropped)."""
    text = read_lines(path)
    prompts = []
    for k in range(len(text) // lines):
        passage = text[k * lines:(k + 1) * lines]
        numbered = "\n".join(f"{i}| {line}" for i, line in enumerate(passage, start=1))
        content = (f"Here is a passage from Shakespeare, with numbered lines:\n\n{numbered}\n\n"
                   f"{_question(passage, k)}")
        prompts.append(Prompt(id=f"shakespeare/{k}", messages=(("user", content),)))
    return prompts

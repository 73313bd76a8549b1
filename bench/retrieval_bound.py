"""What a lookahead drafter that looks its drafts up could take at best, from known outputs.

At each step, over every earlier place where the sequence's last token occurs (in its prompt and
output so far, and in other requests' outputs), the longest run that continues as the output
does: a drafter with every branch at once that knew which one to draft. A step then appends that
run plus the model's next token. ``scripts/lookahead_ceiling.py`` prints it for a workload and
drafts exactly these runs in the engine.
"""
from __future__ import annotations

from collections.abc import Sequence


def retrieval_runs(prompt: Sequence[int], output: Sequence[int], others: Sequence[Sequence[int]] = ()) -> list[int]:
    """runs[n] for n = 0 .. len(output) - 1: after n output tokens, the most of ``output[n:]`` that a
    lookup of ``output[n - 1]`` finds right after one of its occurrences in prompt + output[:n - 1]
    or in ``others`` (runs[0] = 0: the first token comes with the prefill)."""
    runs = [0]
    for n in range(1, len(output)):
        own = [*prompt, *output[:n]]
        last, future = own[-1], output[n:]
        best = 0
        # the own text up to its last token (that occurrence has no continuation yet), others whole
        for text, end in [(own, len(own) - 1), *((t, len(t)) for t in others)]:
            for j in range(end):
                if text[j] != last:
                    continue
                k = 0
                while k < len(future) and j + 1 + k < len(text) and text[j + 1 + k] == future[k]:
                    k += 1
                best = max(best, k)
        runs.append(best)
    return runs


def retrieval_steps(output: Sequence[int], runs: Sequence[int], max_depth: int | None = None) -> int:
    """Decode steps for ``output`` after its first token, each taking its run (at most ``max_depth``)
    plus the model's next token."""
    steps, n = 0, 1
    while n < len(output):
        run = runs[n] if max_depth is None else min(runs[n], max_depth)
        n += min(run + 1, len(output) - n)
        steps += 1
    return steps

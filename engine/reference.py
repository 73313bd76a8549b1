"""Greedy comparison against transformers ``generate``, with the near-tie rule.

Floating-point order can flip a genuine near tie: a divergence is accepted only where the
reference's top-2 logits at that step are within ``tie_tol``; the comparison stops there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True, slots=True)
class ReferenceOutput:
    tokens: list[int]  # greedy continuation (without the prompt)
    top2_gaps: list[float]  # top-1 minus top-2 logit at each generated step


@dataclass(frozen=True, slots=True)
class GreedyMatch:
    ok: bool
    compared: int  # tokens compared before a stop (all if no divergence)
    diverged_at: int | None  # step of the first divergence, if any
    near_tie: bool  # divergence explained by a near tie
    message: str


def hf_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> ReferenceOutput:
    """transformers ``generate(do_sample=False)`` on one prompt, with the logit gaps per step."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id,
        )
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    gaps = []
    for logits in out.logits:
        top = torch.topk(logits[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
    return ReferenceOutput(tokens=tokens, top2_gaps=gaps[: len(tokens)])


def compare_greedy(ref: ReferenceOutput, candidate: Sequence[int], tie_tol: float = 1e-3) -> GreedyMatch:
    cand = list(candidate)
    for i, (a, b) in enumerate(zip(ref.tokens, cand)):
        if a != b:
            tie = i < len(ref.top2_gaps) and ref.top2_gaps[i] <= tie_tol
            msg = (f"diverged at step {i}: reference {a}, got {b}; reference top-2 gap "
                   f"{ref.top2_gaps[i] if i < len(ref.top2_gaps) else float('nan'):.2e}")
            return GreedyMatch(ok=tie, compared=i, diverged_at=i, near_tie=tie,
                               message=msg + (" (near tie: accepted)" if tie else ""))
    if len(ref.tokens) != len(cand):
        # one stopped early (EOS) where the other did not: a real difference
        n = min(len(ref.tokens), len(cand))
        return GreedyMatch(ok=False, compared=n, diverged_at=n, near_tie=False,
                           message=f"lengths differ: reference {len(ref.tokens)}, got {len(cand)}")
    return GreedyMatch(ok=True, compared=len(cand), diverged_at=None, near_tie=False, message="identical")

"""Greedy comparison against transformers ``generate``, with the near-tie rule.

Floating-point order can flip a genuine near tie: a divergence is accepted only where the
reference's top-2 logits at that step are within ``tie_tol`` or within ``TIE_ULPS`` units in the
last place of the reference's own dtype. In fp32 that is ~1e-5 and ``tie_tol`` decides. In bf16,
whose logits near 20 are spaced 0.125 apart, rounding differences carried through 30 layers move a
logit by a few units: Grove's bf16 (row-invariant, fp64 attention) and transformers' bf16 (SDPA)
parted ways at gaps of 0, 1 and 3 units on the bundled model. The comparison stops there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch


TIE_ULPS = 4


@dataclass(frozen=True, slots=True)
class ReferenceOutput:
    tokens: list[int]  # greedy continuation (without the prompt)
    top2_gaps: list[float]  # top-1 minus top-2 logit at each generated step
    top1_ulps: list[float] | None = None  # spacing of the model's dtype at the top-1 logit, per step

    def tie_tol(self, step: int, tie_tol: float) -> float:
        """The gap under which step ``step`` is a near tie."""
        ulp = self.top1_ulps[step] if self.top1_ulps is not None and step < len(self.top1_ulps) else 0.0
        return max(tie_tol, TIE_ULPS * ulp)


@dataclass(frozen=True, slots=True)
class GreedyMatch:
    ok: bool
    compared: int  # tokens compared before a stop (all if no divergence)
    diverged_at: int | None  # step of the first divergence, if any
    near_tie: bool  # divergence explained by a near tie
    message: str


def hf_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> ReferenceOutput:
    """transformers ``generate(do_sample=False)`` on one prompt, with the logit gaps per step."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=model.device)
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
    gaps, ulps = [], []
    eps = torch.finfo(model.dtype).eps  # spacing at 1.0 in the model's dtype
    for logits in out.logits:
        top = torch.topk(logits[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
        ulps.append(eps * 2.0 ** math.floor(math.log2(abs(float(top[0])) or 1.0)))
    return ReferenceOutput(tokens=tokens, top2_gaps=gaps[: len(tokens)], top1_ulps=ulps[: len(tokens)])


def compare_greedy(ref: ReferenceOutput, candidate: Sequence[int], tie_tol: float = 1e-3) -> GreedyMatch:
    cand = list(candidate)
    for i, (a, b) in enumerate(zip(ref.tokens, cand)):
        if a != b:
            tie = i < len(ref.top2_gaps) and ref.top2_gaps[i] <= ref.tie_tol(i, tie_tol)
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

"""Greedy comparison against transformers ``generate``, with the near-tie rule.

Floating-point order can flip a genuine near tie: a divergence is accepted only where the
reference's top-2 logits at that step are within ``tie_tol`` or within ``TIE_ULPS`` units in the
last place of the reference's own dtype. In fp32 that is ~1e-5 and ``tie_tol`` decides. In bf16,
whose logits near 20 are spaced 0.125 apart, rounding differences carried through 30 layers move a
logit by a few units: Grove's bf16 (row-invariant, fp64 attention) and transformers' bf16 (SDPA)
parted ways at gaps of 0, 1 and 3 units on the bundled model. The reference's own bf16 gap is
itself off by a few units, so a 16-bit reference may carry an arbiter (``exact_gap``, built by
``exact_gaps``): the model in its own dtype (fp32) at the reference's prefix, where the two tokens'
logits within the same tolerance also make a near tie (once seen: transformers' bf16 gap 5 units,
0.31, where fp32's was 0.10). The comparison stops there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


TIE_ULPS = 4


@dataclass(frozen=True, slots=True)
class ReferenceOutput:
    tokens: list[int]  # greedy continuation (without the prompt)
    top2_gaps: list[float]  # top-1 minus top-2 logit at each generated step
    top1_ulps: list[float] | None = None  # spacing of the model's dtype at the top-1 logit, per step
    # A 16-bit reference's arbiter: (step, token) -> logit of tokens[step] minus logit of token,
    # after prompt + tokens[:step], in the model's own dtype (fp32). A 16-bit reference's own gap is
    # off by a few units of its rounding, as is the candidate's: where the exact model puts the two
    # tokens within the tie tolerance, a flip is a near tie whatever the reference's own gap says.
    exact_gap: Callable[[int, int], float] | None = field(default=None, compare=False)

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
    return hf_greedy_batch(model, [prompt_ids], max_new_tokens)[0]


def hf_greedy_batch(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[ReferenceOutput]:
    """transformers ``generate(do_sample=False)`` on several prompts in one left-padded batch.

    Padding changes only the shapes of the matrix products, so logits move by float rounding
    (~1e-6 in fp32): a flip that causes is a near tie, which the comparison accepts. A row that
    ends (an EOS token) keeps its tokens up to and including that EOS.
    """
    pad = model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every row's last prompt token in the last column
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(
            ids.to(model.device),
            attention_mask=mask.to(model.device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad,
        )
    eps = torch.finfo(model.dtype).eps  # spacing at 1.0 in the model's dtype
    top = torch.stack(out.logits).float().topk(2, dim=-1).values.tolist()  # [steps][rows][2]
    refs = []
    for row in range(len(prompts)):
        tokens = out.sequences[row, width:].tolist()
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        tops = [step[row] for step in top[:end]]
        refs.append(ReferenceOutput(
            tokens=tokens[:end],
            top2_gaps=[t1 - t2 for t1, t2 in tops],
            top1_ulps=[eps * 2.0 ** math.floor(math.log2(abs(t1) or 1.0)) for t1, _ in tops],
        ))
    return refs


def exact_gaps(model: Any, prompt_ids: Sequence[int], tokens: Sequence[int]) -> Callable[[int, int], float]:
    """An arbiter for ``ReferenceOutput.exact_gap``: ``model`` (the same weights in their own dtype)
    run on prompt + tokens[:step]; returns logit(tokens[step]) - logit(token) there."""
    def gap(step: int, token: int) -> float:
        ids = torch.tensor([[*prompt_ids, *tokens[:step]]], dtype=torch.long, device=model.device)
        with torch.inference_mode():
            logits = model(ids).logits[0, -1].float()
        return (logits[tokens[step]] - logits[token]).item()
    return gap


def compare_greedy(ref: ReferenceOutput, candidate: Sequence[int], tie_tol: float = 1e-3) -> GreedyMatch:
    cand = list(candidate)
    for i, (a, b) in enumerate(zip(ref.tokens, cand)):
        if a != b:
            tol = ref.tie_tol(i, tie_tol)
            tie = i < len(ref.top2_gaps) and ref.top2_gaps[i] <= tol
            msg = (f"diverged at step {i}: reference {a}, got {b}; reference top-2 gap "
                   f"{ref.top2_gaps[i] if i < len(ref.top2_gaps) else float('nan'):.2e}")
            if not tie and ref.exact_gap is not None and i < len(ref.top2_gaps):
                exact = ref.exact_gap(i, b)
                tie = exact <= tol  # below zero: the exact model prefers the candidate's token
                msg += f", in the model's own dtype {exact:.2e} (tolerance {tol:.2e})"
            return GreedyMatch(ok=tie, compared=i, diverged_at=i, near_tie=tie,
                               message=msg + (" (near tie: accepted)" if tie else ""))
    if len(ref.tokens) != len(cand):
        # one stopped early (EOS) where the other did not: a real difference
        n = min(len(ref.tokens), len(cand))
        return GreedyMatch(ok=False, compared=n, diverged_at=n, near_tie=False,
                           message=f"lengths differ: reference {len(ref.tokens)}, got {len(cand)}")
    return GreedyMatch(ok=True, compared=len(cand), diverged_at=None, near_tie=False, message="identical")

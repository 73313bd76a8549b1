"""Sampling as pure functions over a batch of logits rows.

Randomness is counter-based: each row draws one uniform number that is a hash of (request seed,
position of the token being sampled), and picks its token by inverting the CDF of the filtered
distribution. A token is therefore a pure function of (logits, seed, position): the same seed gives
the same output, and a lookahead tree node sampled at position p draws exactly what plain decoding
would draw at p, so verification by equality keeps the model's distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, NamedTuple, Sequence

import torch

from engine.sampling_params import SamplingParams
from engine.structured import apply_bitmask
from kernels import cpu_greedy

_MASK64 = (1 << 64) - 1


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser over int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def uniform_draws(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """seeds, positions: [N] int64 -> one Uniform(0, 1) draw per row, fp64."""
    z = _mix(_mix(seeds) ^ (positions * _M2))
    return (_shr(z, 11).double() + 0.5) * (1.0 / (1 << 53))


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """Per-row sampling tensors for one step, on the logits' device (``build``'s ``device``: a
    CUDA op refuses a host tensor beside its own). A request may own several rows (lookahead tree)."""

    temperature: torch.Tensor  # [N] fp32, 0 for greedy rows
    top_k: torch.Tensor  # [N] int64, 0 = off
    top_p: torch.Tensor  # [N] fp32
    min_p: torch.Tensor  # [N] fp32
    seeds: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64: position of the token each row samples
    repetition_penalty: torch.Tensor  # [N]
    presence_penalty: torch.Tensor  # [N]
    frequency_penalty: torch.Tensor  # [N]
    # only when some row has penalties: each row's prompt and output, rows of one sequence sharing
    # the same objects (read once for all of them), and the draft tokens on a tree row's path
    prompt_ids: tuple[Sequence[int], ...] | None
    output_ids: tuple[Sequence[int], ...] | None
    draft_paths: tuple[Sequence[int], ...] | None
    penalised: tuple[bool, ...]  # each row: has it a penalty (read on the host, no device sync)
    # logit_bias, min_tokens' and bad words' bans as one sparse add (rows, token ids, amounts; -inf
    # bans), None if none
    adjust: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    # structured output and allowed tokens: (rows [R], bitmask [R, ceil(V / 32)] int32 of the tokens
    # each may take), None if none; on the host (engine.structured.apply_bitmask moves the mask)
    allowed: tuple[torch.Tensor, torch.Tensor] | None
    max_logprobs: int | None  # largest top-n asked for, None if no row wants logprobs
    all_greedy: bool
    any_top_k_p: bool

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        seeds: Sequence[int],
        positions: Sequence[int],
        prompt_ids: Sequence[Sequence[int]] | None = None,
        output_ids: Sequence[Sequence[int]] | None = None,
        stop_ids: Sequence[Collection[int]] | None = None,
        allowed: tuple[torch.Tensor, torch.Tensor] | None = None,
        bans: Sequence[Sequence[int]] | None = None,
        draft_paths: Sequence[Sequence[int]] | None = None,
        device: torch.device | str = "cpu",
    ) -> "SamplingBatch":
        """One entry of each per row. ``stop_ids``: the row's EOS and stop tokens, banned while its
        position is within min_tokens of the prompt's end (needs ``prompt_ids``). ``allowed``: the
        masked rows' masks (engine.structured, engine.token_rules). ``bans``: tokens each row may
        not take (bad words'). ``draft_paths``: a tree row's drafts after the output (penalised as
        output). ``device``: the logits'."""
        f32, i64 = torch.float32, torch.long
        penalised = tuple(p.has_penalties for p in params)
        penalties = any(penalised)
        lps = [p.logprobs for p in params if p.logprobs is not None]
        top_k = [p.top_k if p.top_k > 0 else 0 for p in params]
        return cls(
            temperature=torch.tensor([p.temperature for p in params], dtype=f32, device=device),
            top_k=torch.tensor(top_k, dtype=i64, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=f32, device=device),
            min_p=torch.tensor([p.min_p for p in params], dtype=f32, device=device),
            seeds=torch.tensor([_i64(s) for s in seeds], dtype=i64, device=device),
            positions=torch.tensor(list(positions), dtype=i64, device=device),
            repetition_penalty=torch.tensor([p.repetition_penalty for p in params], dtype=f32, device=device),
            presence_penalty=torch.tensor([p.presence_penalty for p in params], dtype=f32, device=device),
            frequency_penalty=torch.tensor([p.frequency_penalty for p in params], dtype=f32, device=device),
            prompt_ids=tuple(prompt_ids) if penalties and prompt_ids is not None else None,
            output_ids=tuple(output_ids) if penalties and output_ids is not None else None,
            draft_paths=tuple(draft_paths) if penalties and draft_paths is not None else None,
            penalised=penalised,
            adjust=_adjustments(params, positions, prompt_ids, stop_ids, bans, device),
            allowed=allowed,
            max_logprobs=max(lps) if lps else None,
            all_greedy=all(p.greedy for p in params),
            any_top_k_p=any(k > 0 for k in top_k) or any(p.top_p < 1.0 or p.min_p > 0 for p in params),
        )


def _adjustments(params: Sequence[SamplingParams], positions: Sequence[int],
                 prompt_ids: Sequence[Sequence[int]] | None,
                 stop_ids: Sequence[Collection[int]] | None,
                 bans: Sequence[Sequence[int]] | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    rows: list[int] = []
    cols: list[int] = []
    amounts: list[float] = []
    for r, (p, pos) in enumerate(zip(params, positions)):
        for token, bias in p.logit_bias:
            rows.append(r)
            cols.append(token)
            amounts.append(bias)
        # the token at position pos has pos - len(prompt) output tokens before it
        if p.min_tokens and prompt_ids is not None and stop_ids is not None \
                and pos - len(prompt_ids[r]) < p.min_tokens:
            for token in stop_ids[r]:
                rows.append(r)
                cols.append(token)
                amounts.append(float("-inf"))
        for token in bans[r] if bans is not None else ():
            rows.append(r)
            cols.append(token)
            amounts.append(float("-inf"))
    if not rows:
        return None
    return (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device),
            torch.tensor(amounts, dtype=torch.float32, device=device))


class SampleOutput(NamedTuple):
    tokens: torch.Tensor  # [N] int64
    logprobs: torch.Tensor | None  # [N] logprob of the chosen token (raw model distribution)
    top_ids: torch.Tensor | None  # [N, max_logprobs]
    top_logprobs: torch.Tensor | None  # [N, max_logprobs]


def apply_adjustments(logits: torch.Tensor, s: SamplingBatch) -> torch.Tensor:
    """logit_bias added; min_tokens' and bad words' bans, what a grammar forbids and tokens not
    allowed set to -inf (a new tensor; ``logits`` is left alone)."""
    if s.adjust is not None:
        rows, cols, amounts = s.adjust
        logits = logits.index_put((rows, cols), amounts, accumulate=True)
    if s.allowed is not None:
        logits = apply_bitmask(logits, s.allowed[1], s.allowed[0])
    return logits


def _penalised_tokens(s: SamplingBatch, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each penalised row's tokens as flat indices row * vocab + token, unique, with how often each
    occurs in the row's output (0: prompt only). Rows of one sequence share their prompt and output
    objects (SamplingBatch.build), so a sequence's tokens become a tensor once for all its rows."""
    assert s.prompt_ids is not None and s.output_ids is not None
    on = s.penalised
    keys: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    r, n = 0, len(on)
    while r < n:
        end = r + 1
        while end < n and s.prompt_ids[end] is s.prompt_ids[r] and s.output_ids[end] is s.output_ids[r]:
            end += 1
        rows = torch.tensor([i for i in range(r, end) if on[i]], dtype=torch.long)[:, None] * vocab  # [R, 1]
        if rows.numel():
            for ids, out in ((s.prompt_ids[r], 0.0), (s.output_ids[r], 1.0)):
                if len(ids):
                    k = (torch.as_tensor(ids, dtype=torch.long)[None, :] + rows).flatten()  # [R * len]
                    keys.append(k)
                    outs.append(torch.full(k.shape, out))
        r = end
    if s.draft_paths is not None:  # every row's path tokens at once, as output tokens of their rows
        lens = torch.tensor([len(p) if on[i] else 0 for i, p in enumerate(s.draft_paths)], dtype=torch.long)
        tokens = torch.tensor([t for i, p in enumerate(s.draft_paths) if on[i] for t in p], dtype=torch.long)
        if tokens.numel():
            keys.append(torch.repeat_interleave(torch.arange(n), lens) * vocab + tokens)
            outs.append(torch.ones(tokens.shape[0]))
    if not keys:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    seen, where = torch.unique(torch.cat(keys), return_inverse=True)
    return seen, torch.zeros(seen.shape[0]).index_add_(0, where, torch.cat(outs))


def apply_penalties(logits: torch.Tensor, s: SamplingBatch) -> torch.Tensor:
    """Repetition (prompt + output, divide/multiply) then frequency and presence (output only), on
    each penalised row's own tokens (a new tensor). Work over every row's whole vocabulary was a
    third of a plain step at batch 16 and more than a step with drafts."""
    if s.output_ids is None or s.prompt_ids is None:
        return logits
    vocab = logits.shape[-1]
    seen, counts = _penalised_tokens(s, vocab)
    if not seen.numel():
        return logits
    seen, counts = seen.to(logits.device), counts.to(logits.device)  # built on the host from token lists
    rows = seen // vocab
    out = logits.clone()
    flat = out.view(-1)
    v = flat[seen]
    rep = s.repetition_penalty[rows]
    v = torch.where(v > 0, v / rep, v * rep)
    v = v - s.frequency_penalty[rows] * counts
    flat[seen] = v - s.presence_penalty[rows] * (counts > 0).float()
    return out


def filter_logits(logits: torch.Tensor, s: SamplingBatch) -> torch.Tensor:
    """Mask (to -inf) tokens outside top-k, top-p and min-p. logits: [N, V], already tempered."""
    if not s.any_top_k_p:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = (s.top_k[:, None] > 0) & (rank >= s.top_k[:, None])
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
    drop |= before >= s.top_p[:, None]  # keeps the smallest prefix reaching top_p (at least one)
    drop |= probs < s.min_p[:, None] * probs[:, :1]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def greedy_pick(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] -> each row's argmax, the first among equals (``max(dim=-1).indices``: 2-3x faster
    than argmax on CPU); fp32 CPU rows by Grove's kernel where it builds (another 10x at 14 rows)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2 \
            and logits.stride(1) == 1 and cpu_greedy.available():
        return cpu_greedy.argmax_rows(logits)
    return logits.max(dim=-1).indices


def sample(logits: torch.Tensor, s: SamplingBatch) -> SampleOutput:
    """logits: [N, V] fp32 -> one token per row."""
    raw = logits
    logits = apply_penalties(apply_adjustments(logits, s), s)
    greedy_tokens = greedy_pick(logits)
    if s.all_greedy:
        tokens = greedy_tokens
    else:
        temp = torch.where(s.temperature > 0, s.temperature, 1.0)[:, None]
        probs = filter_logits(logits / temp, s).softmax(dim=-1)
        cdf = probs.double().cumsum(dim=-1)  # [N, V]
        u = uniform_draws(s.seeds, s.positions)[:, None] * cdf[:, -1:]
        sampled = torch.searchsorted(cdf, u).clamp_(max=logits.shape[-1] - 1)[:, 0]
        tokens = torch.where(s.temperature > 0, sampled, greedy_tokens)
    if s.max_logprobs is None:
        return SampleOutput(tokens, None, None, None)
    logp = raw.log_softmax(dim=-1)
    chosen = logp.gather(-1, tokens[:, None])[:, 0]
    top_values, top_ids = top_k_lowest_first(logp, s.max_logprobs) if s.max_logprobs > 0 else (None, None)
    return SampleOutput(tokens, chosen, top_ids, top_values)


def top_k_lowest_first(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, V] -> (values [N, k], ids [N, k]): each row's k largest, equal values in the order of
    their ids, as greedy_pick takes the first among equals. ``torch.topk`` leaves equals' order to
    its algorithm, which changes with k and the row count: a row's top logprobs would depend on
    what shares its step (the largest top-n asked for there; bf16 logits tie often)."""
    values, ids = x.topk(k, dim=-1)
    kth = values[:, -1:]  # [N, 1]
    # rows where more than k values reach the k-th: which of those equal to it topk kept is its
    # choice; they keep everything above it, then the lowest ids at it
    over = ((x >= kth).sum(dim=-1) > k).nonzero()[:, 0]
    if over.numel():
        xs, ks = x[over], kth[over]
        above, at = xs > ks, xs == ks
        keep = above | (at & (at.cumsum(dim=-1) <= k - above.sum(dim=-1, keepdim=True)))  # k per row
        ids[over] = keep.nonzero()[:, 1].view(-1, k)
    ids = ids.sort(dim=-1).values
    values = x.gather(-1, ids)
    order = values.sort(dim=-1, descending=True, stable=True).indices  # equals keep ascending ids
    return values.gather(-1, order), ids.gather(-1, order)

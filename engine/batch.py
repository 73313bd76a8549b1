"""Per-step batch metadata, planned once per step and passed down to every layer.

The scheduler describes each sequence of the step with a ``SeqInput``; ``plan_batch`` turns the list
into flat tensors. Tokens of all sequences are laid out one sequence after another:

    input_ids:      [T]            T = sum of num_new over the batch
    positions:      [T]            num_cached + depth of the token in its tree (chain: its index)
    slot_mapping:   [T]            flat KV slot (block_id * block_size + offset) the token's K/V go to
    query_start:    [B + 1]        token t of sequence b lives at query_start[b] + t
    num_cached:     [B]            tokens of sequence b already in the KV cache (all visible)
    seq_lens:       [B]            num_cached + num_new
    block_tables:   [B, max_blocks] padded with 0; entries past a sequence's blocks are never read
    tree_mask:      [T, max_q] or None; row t, column j: new token j of t's sequence is visible to t
                    (ancestor or self). None means every sequence is a plain causal chain.
    logits_indices: [N]            rows of the hidden states whose logits the step needs
    sliding_window: W or None      a query at position p sees only keys at positions > p - W
                                   (Mistral); None: full attention
    lora:           LoraBatch or None  the rows of sequences with a LoRA adapter, by adapter

Invariant: the new tokens of a sequence occupy logical KV indices num_cached .. seq_len - 1 of its
block table in input order, whatever their tree shape; a tree token's *position* is by depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Literal, Sequence

import torch

from engine.lora.adapter import LoraAdapter
from engine.lora.batch import LoraBatch


@dataclass(frozen=True, slots=True)
class SeqInput:
    token_ids: Sequence[int]  # the new tokens of this step
    num_cached: int  # tokens already in the KV cache
    block_table: Sequence[int]  # must cover num_cached + len(token_ids) tokens
    # parent of each new token among the new tokens (-1: the last cached token). None: a chain.
    parents: Sequence[int] | None = None
    logits: Literal["last", "all", "none"] = "last"
    lora: LoraAdapter | None = None  # the adapter the sequence runs with


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    query_start: torch.Tensor
    num_cached: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    tree_mask: torch.Tensor | None
    block_size: int
    max_query_len: int
    max_seq_len: int
    # host copies, so backends can plan without device syncs
    query_lens_host: tuple[int, ...]
    seq_lens_host: tuple[int, ...]
    sliding_window: int | None = None

    @property
    def window_applies(self) -> bool:
        """Whether some query of the step has keys outside its sliding window."""
        return self.sliding_window is not None and self.max_seq_len > self.sliding_window

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    def select(self, seqs: Sequence[int]) -> tuple[torch.Tensor, AttentionMetadata]:
        """The metadata of a sub-batch of sequences ``seqs`` (ascending) and the rows [T'] of its
        tokens in this step."""
        if list(seqs) != sorted(set(seqs)):
            raise ValueError(f"select takes distinct sequence indices in ascending order, got {list(seqs)}")
        device = self.positions.device
        idx = torch.tensor(list(seqs), dtype=torch.long, device=device)
        keep = torch.zeros(self.num_seqs, dtype=torch.bool, device=device)
        keep[idx] = True
        seq_of_token = torch.repeat_interleave(keep, torch.tensor(self.query_lens_host, device=device))  # [T]
        rows = seq_of_token.nonzero().squeeze(1)  # ascending: sequence by sequence, in seqs' order
        q_lens = tuple(self.query_lens_host[b] for b in seqs)
        seq_lens = tuple(self.seq_lens_host[b] for b in seqs)
        max_q = max(q_lens)
        tree = None if self.tree_mask is None or max_q == 1 else self.tree_mask[rows][:, :max_q]
        return rows, AttentionMetadata(
            positions=self.positions[rows],
            slot_mapping=self.slot_mapping[rows],
            query_start=torch.tensor(list(accumulate(q_lens, initial=0)), dtype=torch.long, device=device),
            num_cached=self.num_cached[idx],
            seq_lens=self.seq_lens[idx],
            block_tables=self.block_tables[idx],
            tree_mask=tree,
            block_size=self.block_size,
            max_query_len=max_q,
            max_seq_len=max(seq_lens),
            query_lens_host=q_lens,
            seq_lens_host=seq_lens,
            sliding_window=self.sliding_window,
        )


@dataclass(frozen=True, slots=True)
class Batch:
    input_ids: torch.Tensor  # [T]
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # [N]
    # for each sequence, the slice of logits_indices that belongs to it
    logits_start: tuple[int, ...]
    lora: LoraBatch | None = None  # rows with an adapter (None: the base model for every row)


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node (a parent always precedes its child)."""
    depths: list[int] = []
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"parent {p} of tree node {i} must be -1 or an earlier node")
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def _ancestor_mask(parents: Sequence[int]) -> list[list[bool]]:
    n = len(parents)
    rows: list[list[bool]] = []
    for i, p in enumerate(parents):
        row = list(rows[p]) if p >= 0 else [False] * n
        row[i] = True
        rows.append(row)
    return rows


def plan_batch(seqs: Sequence[SeqInput], block_size: int, device: torch.device | str = "cpu",
               sliding_window: int | None = None) -> Batch:
    if not seqs:
        raise ValueError("empty batch")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start = [0]
    logits_idx: list[int] = []
    logits_start: list[int] = []
    has_tree = any(s.parents is not None for s in seqs)
    max_q = max(len(s.token_ids) for s in seqs)
    # [T, max_q]: built in torch, not lists: a prompt chunk of 2,048 tokens beside a tree is 4M entries
    mask = torch.zeros(sum(len(s.token_ids) for s in seqs), max_q, dtype=torch.bool) if has_tree else None
    for s in seqs:
        n = len(s.token_ids)
        if n == 0:
            raise ValueError("a sequence in the batch has no new tokens")
        total = s.num_cached + n
        if len(s.block_table) * block_size < total:
            raise ValueError(f"block table of {len(s.block_table)} blocks cannot hold {total} tokens")
        if s.parents is not None and len(s.parents) != n:
            raise ValueError("parents must have one entry per new token")
        depths = tree_depths(s.parents) if s.parents is not None else list(range(n))
        base = query_start[-1]
        ids.extend(s.token_ids)
        positions.extend(s.num_cached + d for d in depths)
        for i in range(s.num_cached, total):
            slots.append(s.block_table[i // block_size] * block_size + i % block_size)
        logits_start.append(len(logits_idx))
        if s.logits == "last":
            logits_idx.append(base + n - 1)
        elif s.logits == "all":
            logits_idx.extend(range(base, base + n))
        if mask is not None:
            mask[base:base + n, :n] = torch.ones(n, n, dtype=torch.bool).tril_() if s.parents is None \
                else torch.tensor(_ancestor_mask(s.parents), dtype=torch.bool)
        query_start.append(base + n)
    max_blocks = max(len(s.block_table) for s in seqs)
    tables = [list(s.block_table) + [0] * (max_blocks - len(s.block_table)) for s in seqs]
    num_cached = [s.num_cached for s in seqs]
    q_lens = tuple(len(s.token_ids) for s in seqs)
    seq_lens = tuple(c + q for c, q in zip(num_cached, q_lens))

    def t(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    attn = AttentionMetadata(
        positions=t(positions),
        slot_mapping=t(slots),
        query_start=t(query_start),
        num_cached=t(num_cached),
        seq_lens=t(list(seq_lens)),
        block_tables=torch.tensor(tables, dtype=torch.long, device=device),
        tree_mask=mask.to(device) if mask is not None else None,
        block_size=block_size,
        max_query_len=max_q,
        max_seq_len=max(seq_lens),
        query_lens_host=q_lens,
        seq_lens_host=seq_lens,
        sliding_window=sliding_window,
    )
    lora = LoraBatch.build([(start, q, s.lora) for start, q, s in zip(query_start, q_lens, seqs)], query_start[-1],
                           device)
    return Batch(input_ids=t(ids), attn=attn, logits_indices=t(logits_idx), logits_start=tuple(logits_start),
                 lora=lora)

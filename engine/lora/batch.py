"""A step's rows grouped by LoRA adapter, and each group's addition to a projection.

Built by ``engine.batch.plan_batch`` from the sequences' adapters and read by every layer of the
forward (engine.model): after a projection over all T rows, each group adds its adapter's delta
to its own rows. Rows of the base model are untouched, so they keep their bits whatever adapters
share the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from engine.lora.adapter import LoraAdapter


@dataclass(frozen=True, slots=True)
class LoraBatch:
    rows: torch.Tensor  # [R]: the step's rows that run with an adapter, grouped by adapter
    groups: tuple[tuple[LoraAdapter, int, int], ...]  # (adapter, start, end): its rows are rows[start:end]

    @staticmethod
    def build(row_adapters: Sequence[tuple[int, int, LoraAdapter | None]], device: torch.device | str) -> "LoraBatch | None":
        """From each sequence's (first row, row count, adapter); None where no row has one."""
        by_adapter: dict[int, tuple[LoraAdapter, list[int]]] = {}
        for start, count, adapter in row_adapters:
            if adapter is not None:
                by_adapter.setdefault(id(adapter), (adapter, []))[1].extend(range(start, start + count))
        if not by_adapter:
            return None
        rows: list[int] = []
        groups = []
        for adapter, its_rows in by_adapter.values():
            groups.append((adapter, len(rows), len(rows) + len(its_rows)))
            rows += its_rows
        return LoraBatch(torch.tensor(rows, dtype=torch.long, device=device), tuple(groups))

    def add(self, out: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> torch.Tensor:
        """out[rows] += each adapter's delta of x, in place. out: [T, out_features] (a projection
        over the whole step); x: [R, in_features], the projection's input at ``rows``."""
        for adapter, start, end in self.groups:
            pair = adapter.layers[layer].get(projection)
            if pair is not None:
                out.index_add_(0, self.rows[start:end], pair.delta(x[start:end]))
        return out

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
    whole: bool = False  # one adapter for every row of the step, in order (no rows to gather)

    @staticmethod
    def build(row_adapters: Sequence[tuple[int, int, LoraAdapter | None]], num_rows: int,
              device: torch.device | str) -> "LoraBatch | None":
        """From each sequence's (first row, row count, adapter) of a step of ``num_rows`` rows;
        None where no row has one."""
        by_adapter: dict[str, tuple[LoraAdapter, list[int]]] = {}  # by digest
        for start, count, adapter in row_adapters:
            if adapter is not None:
                by_adapter.setdefault(adapter.digest, (adapter, []))[1].extend(range(start, start + count))
        if not by_adapter:
            return None
        rows: list[int] = []
        groups = []
        for adapter, its_rows in by_adapter.values():
            groups.append((adapter, len(rows), len(rows) + len(its_rows)))
            rows += its_rows
        whole = len(groups) == 1 and rows == list(range(num_rows))
        return LoraBatch(torch.tensor(rows, dtype=torch.long, device=device), tuple(groups), whole)

    def add(self, out: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> torch.Tensor:
        """out[rows] += each adapter's delta of x[rows], in place. out: [T, out_features], a
        projection over the whole step; x: [T, in_features], its input."""
        if self.whole:
            pair = self.groups[0][0].layers[layer].get(projection)
            return out.add_(pair.delta(x)) if pair is not None else out
        for adapter, start, end in self.groups:
            pair = adapter.layers[layer].get(projection)
            if pair is not None:
                rows = self.rows[start:end]
                out.index_add_(0, rows, pair.delta(x.index_select(0, rows)))
        return out

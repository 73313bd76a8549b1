"""Blocks as a byte stream, for the gRPC fallback data plane.

A transfer of blocks [b0, b1, ...] is the concatenation of their bytes, cut into chunks of at most
``chunk_bytes`` (under gRPC's message limit); a chunk is (offset into the concatenation, bytes) and
may span blocks. Both the store (Read, Write) and the client use these two helpers.
"""
from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np
import torch


def iter_chunks(blocks: Sequence[torch.Tensor], chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(offset, data) chunks of the concatenated ``blocks`` (each a contiguous [block_bytes] uint8)."""
    assert chunk_bytes > 0
    offset = 0
    parts: list[memoryview] = []
    size = 0
    for block in blocks:
        mv = memoryview(block.cpu().numpy()) if block.device.type != "cpu" else memoryview(block.numpy())
        pos = 0
        while pos < len(mv):
            take = min(chunk_bytes - size, len(mv) - pos)
            parts.append(mv[pos:pos + take])
            size += take
            pos += take
            if size == chunk_bytes:
                yield offset, b"".join(parts)
                offset += size
                parts, size = [], 0
    if size:
        yield offset, b"".join(parts)


class BlockSink:
    """Receives in-order chunks into ``blocks`` (each a contiguous [block_bytes] uint8 view)."""

    def __init__(self, blocks: Sequence[torch.Tensor]) -> None:
        self._blocks = list(blocks)
        self._block_bytes = blocks[0].numel() if blocks else 0
        self.total = self._block_bytes * len(self._blocks)
        self.received = 0

    @property
    def complete(self) -> bool:
        return self.received == self.total

    def write(self, offset: int, data: bytes) -> None:
        """Raises ValueError for a chunk out of order or past the end."""
        if offset != self.received:
            raise ValueError(f"chunk at offset {offset}, expected {self.received}")
        if offset + len(data) > self.total:
            raise ValueError(f"chunk of {len(data)} bytes at {offset} overruns {self.total} bytes of blocks")
        src = np.frombuffer(data, dtype=np.uint8)
        pos = 0
        while pos < len(src):
            index, start = divmod(self.received, self._block_bytes)
            take = min(len(src) - pos, self._block_bytes - start)
            dst = self._blocks[index]
            if dst.device.type == "cpu":
                dst.numpy()[start:start + take] = src[pos:pos + take]
            else:
                with warnings.catch_warnings():  # torch warns that ``data`` is read-only; we only read it
                    warnings.simplefilter("ignore")
                    dst[start:start + take].copy_(torch.from_numpy(src[pos:pos + take]), non_blocking=False)
            pos += take
            self.received += take

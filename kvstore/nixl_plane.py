"""A generic NIXL data plane: register pools of fixed-size blocks, export how peers address them,
READ/WRITE lists of remote blocks into/from local ones, and exchange notifications.

Nothing here knows about the KV store: the store registers its tier pools, a KV client its engine
pool, and a decode worker can READ a prefill worker's blocks with the same calls.

    pool: [num_blocks, ...] contiguous tensor; block i = pool[i] = block_bytes bytes at
          base_addr + i * block_bytes

Peers exchange ``metadata()`` out of band (e.g. over gRPC) and pass it to ``add_peer``; the side
that initiates a transfer needs the other's metadata, the passive side needs nothing. On a host
without RDMA, UCX moves bytes over TCP or shared memory (set ``UCX_NET_DEVICES=lo`` for loopback).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, Sequence, TypeVar

import numpy as np
import torch

from kvstore.errors import NixlTimeoutError, NixlTransferError

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemotePool:
    """How a peer addresses one registered pool (plain values: safe to send anywhere)."""

    agent: str
    name: str
    base_addr: int
    block_bytes: int
    num_blocks: int
    mem_type: str  # "DRAM" | "VRAM"
    device_id: int

    def check_blocks(self, block_ids: np.ndarray) -> None:
        if len(block_ids) and (block_ids.min() < 0 or block_ids.max() >= self.num_blocks):
            raise ValueError(f"block ids outside pool {self.name!r} of {self.num_blocks} blocks")

    def block_addrs(self, block_ids: np.ndarray) -> np.ndarray:
        """Start address of each block (uint64)."""
        self.check_blocks(block_ids)
        return self.base_addr + block_ids.astype(np.uint64) * np.uint64(self.block_bytes)


class TransferStats(NamedTuple):
    bytes: int
    seconds: float
    descriptors: int  # after merging runs of adjacent blocks


def nixl_available() -> bool:
    """Whether NIXL's Python package and native libraries load."""
    try:
        from nixl._api import nixl_agent  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def merge_runs(local_ids: np.ndarray, remote_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group block pairs into runs adjacent on both sides: (local starts, remote starts, lengths)."""
    if len(local_ids) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    breaks = (np.diff(local_ids) != 1) | (np.diff(remote_ids) != 1)
    starts = np.concatenate(([0], np.nonzero(breaks)[0] + 1))
    lengths = np.diff(np.concatenate((starts, [len(local_ids)])))
    return local_ids[starts], remote_ids[starts], lengths


def _make_agent(name: str, progress_thread: bool, progress_delay_us: int) -> Any:
    """A nixl_agent with UCX. nixl's Python wrapper hard-codes the progress thread's delay to 0,
    which busy-polls a core even when idle (about a third of one here); the delay is set on the
    native config while the wrapper builds the agent (single-threaded construction)."""
    from nixl import _api

    native = _api.nixlBind.nixlAgent

    def with_delay(agent_name: str, config: Any) -> Any:
        config.pthrDelay = progress_delay_us
        return native(agent_name, config)

    _api.nixlBind.nixlAgent = with_delay
    try:
        # no listener thread: metadata travels out of band, so there is no port to pick or collide on
        return _api.nixl_agent(name, _api.nixl_agent_config(enable_prog_thread=progress_thread,
                                                            enable_listen_thread=False))
    finally:
        _api.nixlBind.nixlAgent = native


class NixlPlane:
    """One NIXL agent with its registered pools. Use from one thread (an event loop).

    ``progress_thread``: keep it for any agent that peers READ from or WRITE into (the passive side
    of a one-sided transfer needs it over shared memory/TCP). An agent that only initiates can turn
    it off: its transfers then progress as it polls them, which is faster on few cores.
    ``progress_delay_us``: how long the progress thread sleeps between idle polls.
    """

    def __init__(self, name_prefix: str = "grove", poll_s: float = 0.001, progress_thread: bool = True,
                 progress_delay_us: int = 100) -> None:
        self.name = f"{name_prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._agent = _make_agent(self.name, progress_thread, progress_delay_us)
        self._progress_thread = progress_thread
        self._pools: dict[str, tuple[torch.Tensor, RemotePool, Any]] = {}
        self._peers: set[str] = set()
        self._poll_s = poll_s

    # ---- registration and metadata ----------------------------------------------------------
    def register_pool(self, name: str, pool: torch.Tensor) -> RemotePool:
        """Register ``pool`` ([num_blocks, ...], contiguous) for transfers; block i is pool[i]."""
        if name in self._pools:
            raise ValueError(f"pool {name!r} is registered already")
        if not pool.is_contiguous() or pool.dim() < 1 or pool.shape[0] == 0:
            raise ValueError(f"pool {name!r} must be a non-empty contiguous [num_blocks, ...] tensor")
        reg = self._agent.register_memory(pool)
        block_bytes = pool[0].numel() * pool.element_size()
        info = RemotePool(self.name, name, pool.data_ptr(), block_bytes, pool.shape[0],
                          "DRAM" if pool.device.type == "cpu" else "VRAM", max(pool.get_device(), 0))
        self._pools[name] = (pool, info, reg)
        logger.info("NIXL %s registered pool %s: %d blocks of %d bytes (%s)", self.name, name, info.num_blocks,
                    block_bytes, info.mem_type)
        return info

    def export(self, name: str) -> RemotePool:
        """How peers address local pool ``name``."""
        return self._pools[name][1]

    def metadata(self) -> bytes:
        """This agent's metadata (connection info + registered memory) for a peer's add_peer."""
        return self._agent.get_agent_metadata()

    def add_peer(self, metadata: bytes) -> str:
        """Load a peer's metadata; returns its agent name (what RemotePool.agent holds)."""
        try:
            name = self._agent.add_remote_agent(metadata)
        except Exception as e:  # nixl's native error types
            raise NixlTransferError(f"NIXL could not load a peer's metadata: {e!r}") from e
        name = name.decode() if isinstance(name, bytes) else name
        self._peers.add(name)
        return name

    def remove_peer(self, agent: str) -> None:
        if agent in self._peers:
            self._agent.remove_remote_agent(agent)
            self._peers.discard(agent)

    # ---- transfers --------------------------------------------------------------------------
    async def read(self, remote: RemotePool, remote_blocks: Sequence[int], local: str,
                   local_blocks: Sequence[int], notif: bytes = b"", timeout_s: float = 60.0) -> TransferStats:
        """Copy remote blocks into local blocks (pairwise, in order); ``notif`` reaches the peer when done."""
        return await self._transfer("READ", remote, remote_blocks, local, local_blocks, notif, timeout_s)

    async def write(self, remote: RemotePool, remote_blocks: Sequence[int], local: str,
                    local_blocks: Sequence[int], notif: bytes = b"", timeout_s: float = 60.0) -> TransferStats:
        """Copy local blocks into remote blocks (pairwise, in order); ``notif`` reaches the peer when done."""
        return await self._transfer("WRITE", remote, remote_blocks, local, local_blocks, notif, timeout_s)

    async def _transfer(self, op: Literal["READ", "WRITE"], remote: RemotePool, remote_blocks: Sequence[int],
                        local: str, local_blocks: Sequence[int], notif: bytes, timeout_s: float) -> TransferStats:
        if local not in self._pools:
            raise ValueError(f"no local pool {local!r} registered (have {sorted(self._pools)})")
        _, mine, _ = self._pools[local]
        if remote.agent not in self._peers:
            raise NixlTransferError(f"peer {remote.agent!r} unknown: add_peer(its metadata) first")
        if remote.block_bytes != mine.block_bytes:
            raise ValueError(f"block size differs: remote {remote.block_bytes} bytes, local {mine.block_bytes}")
        if len(remote_blocks) != len(local_blocks):
            raise ValueError(f"{len(remote_blocks)} remote blocks for {len(local_blocks)} local ones")
        if not len(local_blocks):
            return TransferStats(0, 0.0, 0)
        local_ids, remote_ids = np.asarray(local_blocks, dtype=np.int64), np.asarray(remote_blocks, dtype=np.int64)
        mine.check_blocks(local_ids)
        remote.check_blocks(remote_ids)
        l_start, r_start, run = merge_runs(local_ids, remote_ids)
        # descriptors: rows of (address, length, device id), one per run of adjacent blocks
        lengths = run.astype(np.uint64) * np.uint64(mine.block_bytes)
        local_descs = np.stack([mine.block_addrs(l_start), lengths, np.full_like(lengths, mine.device_id)], 1)
        remote_descs = np.stack([remote.block_addrs(r_start), lengths, np.full_like(lengths, remote.device_id)], 1)
        agent = self._agent
        start = time.perf_counter()
        handle = self._native(op, len(local_ids), remote, lambda: agent.initialize_xfer(
            op, agent.get_xfer_descs(local_descs, mine.mem_type), agent.get_xfer_descs(remote_descs, remote.mem_type),
            remote.agent, notif))
        try:
            state = self._native(op, len(local_ids), remote, agent.transfer, handle)
            polls = 0
            while state == "PROC":
                if time.perf_counter() - start > timeout_s:
                    raise NixlTimeoutError(f"NIXL {op} of {len(local_ids)} blocks timed out after {timeout_s} s")
                polls += 1
                # without a progress thread our polls drive the transfer: keep polling (yielding to
                # the loop each time); with one, spin briefly, then back off
                await asyncio.sleep(0 if polls < 64 or not self._progress_thread else self._poll_s)
                state = self._native(op, len(local_ids), remote, agent.check_xfer_state, handle)
            if state != "DONE":
                raise NixlTransferError(f"NIXL {op} of {len(local_ids)} blocks with {remote.agent} failed ({state})")
        finally:
            try:
                handle.release()
            except Exception:  # an aborted transfer may refuse release; the agent frees it on close
                logger.exception("releasing a NIXL transfer handle failed")
        return TransferStats(int(lengths.sum()), time.perf_counter() - start, len(lengths))

    @staticmethod
    def _native(op: str, num_blocks: int, remote: RemotePool, call: Callable[..., T], *args: object) -> T:
        """A NIXL call whose native errors (a peer that disconnected, say) become NixlTransferError."""
        try:
            return call(*args)
        except Exception as e:  # nixl raises its own native error types
            raise NixlTransferError(f"NIXL {op} of {num_blocks} blocks with {remote.agent}: {e!r}") from e

    # ---- notifications ----------------------------------------------------------------------
    def send_notif(self, agent: str, message: bytes) -> None:
        self._agent.send_notif(agent, message)

    def poll_notifs(self) -> dict[str, list[bytes]]:
        """Notifications that arrived since the last poll, by sender agent name."""
        return self._agent.get_new_notifs()

    async def wait_notif(self, agent: str, tag: bytes, timeout_s: float = 60.0) -> None:
        """Wait for a notification from ``agent`` that starts with ``tag`` and consume it; others stay
        queued for later waits (use either this or poll_notifs, which drains everything)."""
        deadline = time.perf_counter() + timeout_s
        while not self._agent.check_remote_xfer_done(agent, tag, tag_is_prefix=True):
            if time.perf_counter() > deadline:
                raise NixlTransferError(f"no notification {tag!r} from {agent} within {timeout_s} s")
            await asyncio.sleep(self._poll_s)

    def close(self) -> None:
        for agent in list(self._peers):
            self.remove_peer(agent)
        for name, (_, _, reg) in list(self._pools.items()):
            self._agent.deregister_memory(reg)
        self._pools.clear()

"""Small values passed between the store, the servicer, the client and the protocol module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kvstore.nixl_plane import RemotePool


class BlockHandle(NamedTuple):
    """One block of the store: row ``block`` of tier ``tier``'s pool."""

    tier: str
    block: int

    def __str__(self) -> str:
        return f"{self.tier}:{self.block}"


class MatchResult(NamedTuple):
    num_tokens: int  # cached prefix length; a multiple of block_size
    handles: tuple[BlockHandle, ...]  # one per cached block, in token order
    lease_id: int  # 0: nothing leased (no hit, or a peek)


class AllocateResult(NamedTuple):
    lease_id: int  # 0: every block was cached, nothing to write
    num_cached_blocks: int  # leading blocks already cached (pinned by the lease until commit)
    handles: tuple[BlockHandle, ...]  # blocks to fill: token blocks num_cached_blocks.. in order


class CommitResult(NamedTuple):
    num_new_blocks: int  # blocks this commit added to the trie
    num_cached_tokens: int  # tokens of the request cached after the commit


class ConnectInfo(NamedTuple):
    grove_version: str
    block_bytes: int
    nixl_enabled: bool
    nixl_agent: str
    nixl_metadata: bytes
    pools: tuple[RemotePool, ...]  # one per tier, named by tier; empty without NIXL
    max_chunk_bytes: int
    lease_ttl_s: float
    store_id: int  # the store process's random id (KVStore.store_id)


class TransferReport(NamedTuple):
    plane: str  # "nixl" | "grpc"
    bytes: int
    seconds: float


class TierStats(NamedTuple):
    name: str
    device: str
    capacity_blocks: int
    used_blocks: int  # not free: cached or allocated for a write
    cached_blocks: int  # owned by trie nodes
    demoted_blocks: int
    dropped_blocks: int


class StoreStats(NamedTuple):
    tiers: tuple[TierStats, ...]
    block_bytes: int
    num_namespaces: int
    num_leases: int
    match_queries: int
    match_query_tokens: int
    match_hit_tokens: int


@dataclass
class SnapshotStats:
    """The snapshots written while the store served (kvstore.snapshot; its /metrics)."""
    written: int = 0
    failed: int = 0
    blocks: int = 0  # in the last one written
    seconds: float = 0.0  # the last one's writing time
    at: float = 0.0  # the last one's end, unix time (0: none yet)

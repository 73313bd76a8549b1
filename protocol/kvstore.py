"""Conversion between grove.internal.v1 kvstore messages and kvstore's domain values.

Decoding validates: a malformed field raises InvalidRequestError naming the field, which the
servicer turns into INVALID_ARGUMENT.
"""
from __future__ import annotations

from typing import Iterable

from engine.kv_layout import KVLayout
from grove.internal.v1 import kvstore_pb2 as pb
from kvstore.errors import InvalidRequestError
from kvstore.nixl_plane import RemotePool
from kvstore.types import (AllocateResult, BlockHandle, CommitResult, ConnectInfo, MatchResult, StoreStats,
                           TierStats, TransferReport)


# ---- namespace ------------------------------------------------------------------------------
def namespace_to_pb(layout: KVLayout, cache_salt: str = "") -> pb.Namespace:
    return pb.Namespace(
        layout=pb.KVLayout(model_id=layout.model_id, dtype=layout.dtype, block_size=layout.block_size,
                           num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim),
        compat_key=layout.compat_key(), cache_salt=cache_salt)


def namespace_from_pb(msg: pb.Namespace) -> tuple[KVLayout, str, str]:
    """(layout, compat key, cache salt) of a request's namespace."""
    if not msg.HasField("layout"):
        raise InvalidRequestError("ns.layout", "missing: every request names its KV layout")
    m = msg.layout
    if not m.model_id:
        raise InvalidRequestError("ns.layout.model_id", "empty")
    try:
        layout = KVLayout(m.model_id, m.dtype, m.block_size, m.num_layers, m.num_kv_heads, m.head_dim)
    except ValueError as e:
        raise InvalidRequestError("ns.layout", str(e)) from None
    return layout, msg.compat_key, msg.cache_salt


# ---- handles --------------------------------------------------------------------------------
def handles_to_pb(handles: Iterable[BlockHandle]) -> list[pb.BlockHandle]:
    return [pb.BlockHandle(tier=h.tier, block=h.block) for h in handles]


def handles_from_pb(msgs: Iterable[pb.BlockHandle]) -> tuple[BlockHandle, ...]:
    return tuple(BlockHandle(m.tier, m.block) for m in msgs)


# ---- results --------------------------------------------------------------------------------
def match_to_pb(result: MatchResult, lease_ttl_s: float, store_id: int) -> pb.MatchResponse:
    return pb.MatchResponse(num_tokens=result.num_tokens, handles=handles_to_pb(result.handles),
                            lease_id=result.lease_id, lease_ttl_s=lease_ttl_s if result.lease_id else 0.0,
                            store_id=store_id)


def match_from_pb(msg: pb.MatchResponse) -> MatchResult:
    return MatchResult(msg.num_tokens, handles_from_pb(msg.handles), msg.lease_id)


def allocate_to_pb(result: AllocateResult, lease_ttl_s: float, store_id: int) -> pb.AllocateResponse:
    return pb.AllocateResponse(lease_id=result.lease_id, num_cached_blocks=result.num_cached_blocks,
                               handles=handles_to_pb(result.handles),
                               lease_ttl_s=lease_ttl_s if result.lease_id else 0.0, store_id=store_id)


def allocate_from_pb(msg: pb.AllocateResponse) -> AllocateResult:
    return AllocateResult(msg.lease_id, msg.num_cached_blocks, handles_from_pb(msg.handles))


def commit_to_pb(result: CommitResult) -> pb.CommitResponse:
    return pb.CommitResponse(num_new_blocks=result.num_new_blocks, num_cached_tokens=result.num_cached_tokens)


def commit_from_pb(msg: pb.CommitResponse) -> CommitResult:
    return CommitResult(msg.num_new_blocks, msg.num_cached_tokens)


def report_to_pb(report: TransferReport | None) -> pb.TransferReport | None:
    return None if report is None else pb.TransferReport(plane=report.plane, bytes=report.bytes,
                                                         seconds=report.seconds)


def report_from_pb(owner: pb.CommitRequest | pb.ReleaseRequest) -> TransferReport | None:
    if not owner.HasField("transfer"):
        return None
    m = owner.transfer
    if m.plane != "nixl" or m.seconds < 0:  # the store measures its gRPC streams itself
        raise InvalidRequestError("transfer", f"reports are for plane 'nixl' with seconds >= 0, got {m.plane!r}, "
                                              f"{m.seconds}")
    return TransferReport(m.plane, m.bytes, m.seconds)


# ---- connect and stats ----------------------------------------------------------------------
def connect_to_pb(info: ConnectInfo) -> pb.ConnectResponse:
    return pb.ConnectResponse(
        grove_version=info.grove_version, block_bytes=info.block_bytes, nixl_enabled=info.nixl_enabled,
        nixl_agent=info.nixl_agent, nixl_metadata=info.nixl_metadata, max_chunk_bytes=info.max_chunk_bytes,
        lease_ttl_s=info.lease_ttl_s, store_id=info.store_id,
        pools=[pb.PoolInfo(tier=p.name, base_addr=p.base_addr, block_bytes=p.block_bytes, num_blocks=p.num_blocks,
                           mem_type=p.mem_type, device_id=p.device_id) for p in info.pools])


def connect_from_pb(msg: pb.ConnectResponse) -> ConnectInfo:
    pools = tuple(RemotePool(msg.nixl_agent, p.tier, p.base_addr, p.block_bytes, p.num_blocks, p.mem_type,
                             p.device_id) for p in msg.pools)
    return ConnectInfo(msg.grove_version, msg.block_bytes, msg.nixl_enabled, msg.nixl_agent, msg.nixl_metadata,
                       pools, msg.max_chunk_bytes, msg.lease_ttl_s, msg.store_id)


def stats_to_pb(stats: StoreStats) -> pb.StatsResponse:
    return pb.StatsResponse(
        tiers=[pb.TierStats(name=t.name, device=t.device, capacity_blocks=t.capacity_blocks,
                            used_blocks=t.used_blocks, cached_blocks=t.cached_blocks,
                            demoted_blocks=t.demoted_blocks, dropped_blocks=t.dropped_blocks) for t in stats.tiers],
        block_bytes=stats.block_bytes, num_namespaces=stats.num_namespaces, num_leases=stats.num_leases,
        match_queries=stats.match_queries, match_query_tokens=stats.match_query_tokens,
        match_hit_tokens=stats.match_hit_tokens)


def stats_from_pb(msg: pb.StatsResponse) -> StoreStats:
    tiers = tuple(TierStats(t.name, t.device, t.capacity_blocks, t.used_blocks, t.cached_blocks, t.demoted_blocks,
                            t.dropped_blocks) for t in msg.tiers)
    return StoreStats(tiers, msg.block_bytes, msg.num_namespaces, msg.num_leases, msg.match_queries,
                      msg.match_query_tokens, msg.match_hit_tokens)

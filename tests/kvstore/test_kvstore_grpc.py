"""The gRPC surface over a real channel (in-process server on port 0, gRPC data plane): every
refusal carries the right status code and a message, and the store keeps serving afterwards."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import grpc
import pytest
import torch
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from engine.kv_layout import KVLayout
from grove.internal.v1 import kvstore_pb2 as pb
from grove.internal.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore.client import KVStoreClient
from kvstore.config import ServerConfig
from kvstore.metrics import StoreCollector
from kvstore.server import connect_info, create_server
from kvstore.servicer import KVStoreServicer
from kvstore.store import KVStore
from protocol import kvstore as convert

LAYOUT = KVLayout("test-model", "float32", 4, 2, 1, 4)  # matches conftest.GEOMETRY: 256-byte blocks
NS = convert.namespace_to_pb(LAYOUT)
StatusCode = grpc.StatusCode
MakeStore = Callable[..., KVStore]  # the conftest fixture: make_store(upper=0, cpu=8, ttl=30.0)


def serve(store: KVStore, body: Callable[[pb_grpc.KVStoreStub, str], Awaitable[Any]], chunk: int = 100) -> Any:
    """Run ``body(stub, address)`` against a fresh server for ``store`` (chunks of ``chunk`` bytes:
    smaller than a block, so streams cut blocks)."""
    async def main() -> Any:
        servicer = KVStoreServicer(store, connect_info(store, None, ServerConfig(max_chunk_bytes=chunk)))
        server, port = await create_server("127.0.0.1:0", servicer)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await body(pb_grpc.KVStoreStub(channel), f"127.0.0.1:{port}")
        finally:
            await server.stop(None)
    return uvloop.run(main())


async def refused(call: Awaitable[Any], code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details(), info.value.details()


def test_health_connect_and_round_trip(make_store: MakeStore) -> None:
    store = make_store(cpu=16)

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        channel = grpc.aio.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "grove.internal.v1.KVStore"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()
        pool = torch.randn(8, *LAYOUT.block_shape)
        async with KVStoreClient(address, LAYOUT, pool, use_nixl=True) as kv:
            assert kv.data_plane == "grpc"  # the store serves no NIXL here: the client falls back
            tokens = list(range(4 * 5 + 2))
            assert await kv.write(tokens, [3, 1, 4, 0, 2]) == 5
            assert await kv.write(tokens[:12] + [99] * 4, [3, 1, 4, 5]) == 1  # shares 3 cached blocks
            hit = await kv.match(tokens)
            assert hit.num_tokens == 20
            assert await kv.read(hit, [7, 6, 5]) == 3 * 256  # a prefix of the hit, chunks cut blocks
            await kv.release(hit.lease_id)
            assert pool[7].equal(pool[3]) and pool[6].equal(pool[1]) and pool[5].equal(pool[4])
            stats = await kv.stats()
            assert stats.tiers[0].cached_blocks == 6 and stats.num_leases == 0 and stats.match_hit_tokens == 20
        for i, h in enumerate(store.match(convert.namespace_from_pb(NS)[1], tokens).handles):
            assert store.block_view(h).equal(pool[[3, 1, 4, 0, 2][i]])  # the store's end holds the same bytes

    serve(store, body)


def test_the_client_reads_and_writes_under_a_cache_salt(make_store: MakeStore) -> None:
    store = make_store(cpu=16)

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        pool = torch.randn(8, *LAYOUT.block_shape)
        async with KVStoreClient(address, LAYOUT, pool, use_nixl=False) as kv:
            tokens = list(range(4 * 3))
            assert await kv.write(tokens, [0, 1, 2], cache_salt="tenant-a") == 3
            assert (await kv.match(tokens, lease=False)).num_tokens == 0
            assert (await kv.match(tokens, lease=False, cache_salt="tenant-b")).num_tokens == 0
            hit = await kv.match(tokens, cache_salt="tenant-a")
            assert hit.num_tokens == 12
            assert await kv.read(hit, [5, 6, 7]) == 3 * 256
            await kv.release(hit.lease_id)
            assert all(pool[5 + i].equal(pool[i]) for i in range(3))
            assert await kv.write(tokens, [0, 1, 2]) == 3  # unsalted: written again, apart
            assert (await kv.stats()).num_namespaces == 2

    serve(store, body)


def test_bad_namespace_and_tokens_are_invalid_argument(make_store: MakeStore) -> None:
    store = make_store()

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        bad_dtype = pb.Namespace(compat_key=NS.compat_key, layout=pb.KVLayout(
            model_id="m", dtype="float16", block_size=4, num_layers=2, num_kv_heads=1, head_dim=4))
        await refused(stub.Match(pb.MatchRequest(ns=bad_dtype, tokens=[1] * 4)), StatusCode.INVALID_ARGUMENT,
                      "ns.layout: dtype 'float16' does not match the store's 'float32'")
        bad_shape = pb.Namespace(compat_key=NS.compat_key, layout=pb.KVLayout(
            model_id="m", dtype="float32", block_size=8, num_layers=2, num_kv_heads=1, head_dim=4))
        await refused(stub.Allocate(pb.AllocateRequest(ns=bad_shape, tokens=[1] * 8)), StatusCode.INVALID_ARGUMENT,
                      "block_size 8 does not match the store's 4")
        wrong_key = pb.Namespace(layout=NS.layout, compat_key="deadbeef")
        await refused(stub.Connect(pb.ConnectRequest(ns=wrong_key)), StatusCode.INVALID_ARGUMENT,
                      "'deadbeef' is not this layout's key")
        await refused(stub.Match(pb.MatchRequest(tokens=[1] * 4)), StatusCode.INVALID_ARGUMENT, "ns.layout: missing")
        unknown = pb.Namespace(compat_key="x", layout=pb.KVLayout(model_id="m", dtype="int8", block_size=4,
                                                                  num_layers=2, num_kv_heads=1, head_dim=4))
        await refused(stub.Match(pb.MatchRequest(ns=unknown, tokens=[1] * 4)), StatusCode.INVALID_ARGUMENT,
                      "unsupported dtype 'int8'")
        await refused(stub.Allocate(pb.AllocateRequest(ns=NS, tokens=[1, 2])), StatusCode.INVALID_ARGUMENT,
                      "need at least one full block of 4 tokens, got 2")
        await refused(stub.Match(pb.MatchRequest(ns=NS, tokens=[1, -5, 2, 3])), StatusCode.INVALID_ARGUMENT,
                      "non-negative")
        assert (await stub.Match(pb.MatchRequest(ns=NS, tokens=[1] * 4))).num_tokens == 0  # still serving

    serve(store, body)


def test_unknown_or_expired_leases_are_not_found(make_store: MakeStore, clock: Any) -> None:
    store = make_store(ttl=5.0)

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        await refused(stub.Release(pb.ReleaseRequest(lease_id=12345)), StatusCode.NOT_FOUND,
                      "lease 12345 is unknown, released or expired")
        await refused(stub.Commit(pb.CommitRequest(lease_id=7)), StatusCode.NOT_FOUND, "lease 7 is unknown")
        alloc = await stub.Allocate(pb.AllocateRequest(ns=NS, tokens=list(range(8))))
        await refused(stub.Read(pb.ReadRequest(lease_id=alloc.lease_id, handles=alloc.handles)).read(),
                      StatusCode.INVALID_ARGUMENT, "is a write lease; Read needs a Match's")
        stranger = pb.BlockHandle(tier="cpu", block=7)
        write = stub.Write(iter([pb.WriteRequest(lease_id=alloc.lease_id, handles=[stranger])]))
        await refused(write, StatusCode.NOT_FOUND, f"block cpu:7 is not held by lease {alloc.lease_id}")
        clock.now += 6.0  # the lease expires before its commit
        await refused(stub.Commit(pb.CommitRequest(lease_id=alloc.lease_id)), StatusCode.NOT_FOUND,
                      f"lease {alloc.lease_id} is unknown, released or expired")
        assert (await stub.Stats(pb.StatsRequest())).tiers[0].used_blocks == 0  # its blocks came back

    serve(store, body)


def test_short_or_overlong_write_streams_are_invalid_argument(make_store: MakeStore) -> None:
    store = make_store()

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        alloc = await stub.Allocate(pb.AllocateRequest(ns=NS, tokens=list(range(8))))
        head = pb.WriteRequest(lease_id=alloc.lease_id, handles=alloc.handles,
                               chunk=pb.DataChunk(offset=0, data=b"\1" * 300))
        await refused(stub.Write(iter([head])), StatusCode.INVALID_ARGUMENT, "stream ended after 300 of 512 bytes")
        tail = pb.WriteRequest(chunk=pb.DataChunk(offset=300, data=b"\1" * 300))
        await refused(stub.Write(iter([head, tail])), StatusCode.INVALID_ARGUMENT, "overruns 512 bytes")
        await refused(stub.Write(iter([])), StatusCode.INVALID_ARGUMENT, "empty Write stream")
        await refused(stub.Commit(pb.CommitRequest(lease_id=alloc.lease_id, transfer=pb.TransferReport(
            plane="carrier-pigeon", bytes=1))), StatusCode.INVALID_ARGUMENT, "reports are for plane 'nixl'")
        fine = pb.WriteRequest(chunk=pb.DataChunk(offset=300, data=b"\2" * 212))
        assert (await stub.Write(iter([head, fine]))).bytes_written == 512
        assert (await stub.Commit(pb.CommitRequest(lease_id=alloc.lease_id))).num_new_blocks == 2

    serve(store, body)


def test_full_store_is_resource_exhausted_then_recovers(make_store: MakeStore) -> None:
    store = make_store(cpu=2)

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        first = await stub.Allocate(pb.AllocateRequest(ns=NS, tokens=list(range(8))))
        await refused(stub.Allocate(pb.AllocateRequest(ns=NS, tokens=[9] * 4)), StatusCode.RESOURCE_EXHAUSTED,
                      "need 1 free blocks but only 0 can be freed")
        await stub.Release(pb.ReleaseRequest(lease_id=first.lease_id))
        assert len((await stub.Allocate(pb.AllocateRequest(ns=NS, tokens=[9] * 4))).handles) == 1

    serve(store, body)


def test_two_writers_of_one_prefix_over_grpc(make_store: MakeStore) -> None:
    store = make_store(cpu=8)

    async def body(stub: pb_grpc.KVStoreStub, address: str) -> None:
        pools = [torch.full((4, *LAYOUT.block_shape), float(v)) for v in (1, 2)]
        clients = [KVStoreClient(address, LAYOUT, p, use_nixl=False) for p in pools]
        for c in clients:
            await c.start()
        allocs = [await stub.Allocate(pb.AllocateRequest(ns=NS, tokens=list(range(12)))) for _ in clients]
        for c, a in zip(clients, allocs):
            await c._stream_write(a.lease_id, convert.handles_from_pb(a.handles), [0, 1, 2])
        assert (await stub.Commit(pb.CommitRequest(lease_id=allocs[1].lease_id))).num_new_blocks == 3
        assert (await stub.Commit(pb.CommitRequest(lease_id=allocs[0].lease_id))).num_new_blocks == 0
        hit = await clients[0].match(list(range(12)))
        await clients[0].read(hit, [3, 2, 1])
        await clients[0].release(hit.lease_id)
        assert bool((pools[0][1:] == 2.0).all()) and bool((pools[0][0] == 1.0).all())  # the winner's bytes
        assert (await clients[0].stats()).tiers[0].used_blocks == 3  # the loser's blocks were freed
        for c in clients:
            await c.close()

    serve(store, body)


def test_metrics_names_and_values(make_store: MakeStore) -> None:
    store = make_store(upper=2, cpu=4)
    store.match("ns", [1, 2, 3, 4])
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    text = generate_latest(registry).decode()
    for line in ('grove:kvstore_blocks_capacity{tier="gpu"} 2.0', 'grove:kvstore_blocks_used{tier="cpu"} 0.0',
                 "grove:kvstore_match_queries_total 1.0", "grove:kvstore_match_query_tokens_total 4.0",
                 'grove:kvstore_evictions_total{kind="demoted",tier="gpu"} 0.0',
                 'grove:kvstore_transfer_bytes_total{direction="read",plane="nixl"} 0.0'):
        assert line in text, f"{line!r} not in metrics:\n{text}"

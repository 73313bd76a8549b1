"""A worker's view of the kvstore (kvstore.shared_cache) over real gRPC servers:
a store that is down at startup, or restarts under the worker, costs cache hits, never requests,
and is used again once it is back."""
from __future__ import annotations

import asyncio
import socket
from typing import Callable

import grpc
import torch
import uvloop

from engine.kv_layout import KVLayout
from kvstore.client import KVStoreClient
from kvstore.config import ServerConfig
from kvstore.errors import StoreRestartedError
from kvstore.server import connect_info, create_server
from kvstore.servicer import KVStoreServicer
from kvstore.store import KVStore
from kvstore.shared_cache import SharedCache

LAYOUT = KVLayout("test-model", "float32", 4, 2, 1, 4)  # matches conftest.GEOMETRY
MakeStore = Callable[..., KVStore]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(store: KVStore, port: int) -> grpc.aio.Server:
    server, _ = await create_server(f"127.0.0.1:{port}", KVStoreServicer(store, connect_info(store, None, ServerConfig())))
    return server


async def reconnected(cache: SharedCache) -> None:
    """Waits out the cool-down and the background reconnect it starts."""
    for _ in range(100):
        if cache.ready() is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache never reconnected")


def test_a_restarted_store_is_noticed_and_reconnected(make_store: MakeStore) -> None:
    """Another store answering at the same address (a restart) is not read from as if it were the
    first: the client sees its new store id, the cache drops the connection and reconnects."""
    port = free_port()
    tokens = list(range(12))

    async def main() -> None:
        first = await serve(make_store(cpu=8), port)
        pool = torch.randn(8, *LAYOUT.block_shape)
        cache = SharedCache(KVStoreClient(f"127.0.0.1:{port}", LAYOUT, pool, use_nixl=False, timeout_s=2.0),
                            cooldown_s=0.2)
        await cache.start()
        client = cache.ready()
        assert client is not None and cache.failures == 0
        assert await client.write(tokens, [0, 1, 2]) == 3
        assert (await client.match(tokens, lease=False)).num_tokens == 12
        await first.stop(None)
        second_store = make_store(cpu=8)
        second = await serve(second_store, port)
        try:
            try:
                await client.match(tokens)
                raise AssertionError("a restarted store went unnoticed")
            except StoreRestartedError as exc:
                cache.failed("match", exc)
            assert cache.ready() is None and cache.failures == 1 and not cache.connected
            assert second_store.stats().num_leases == 0  # the lease the match took was given back
            await reconnected(cache)
            assert (await client.match(tokens, lease=False)).num_tokens == 0  # the new store is empty
            assert await client.write(tokens, [0, 1, 2]) == 3
            assert (await client.match(tokens, lease=False)).num_tokens == 12
        finally:
            await cache.close()
            await second.stop(None)

    uvloop.run(main())


def test_a_store_down_at_startup_is_used_once_it_comes_up(make_store: MakeStore) -> None:
    port = free_port()

    async def main() -> None:
        pool = torch.randn(8, *LAYOUT.block_shape)
        cache = SharedCache(KVStoreClient(f"127.0.0.1:{port}", LAYOUT, pool, use_nixl=False, timeout_s=1.0),
                            cooldown_s=0.2)
        await cache.start()  # nothing listens: the worker starts without the cache
        assert cache.ready() is None and cache.failures == 1
        server = await serve(make_store(cpu=8), port)
        try:
            await reconnected(cache)
            client = cache.ready()
            assert client is not None and await client.write(list(range(8)), [0, 1]) == 2
        finally:
            await cache.close()
            await server.stop(None)

    uvloop.run(main())

"""vLLM's reset of the prefix cache, as a worker answers it (both workers' ``ResetPrefixCache``):
its engine forgets every cached prefix between two steps (the blocks running requests use stay
theirs), and, asked, its kvstore drops every block no lease holds."""
from __future__ import annotations

import grpc

from engine.async_engine import AsyncEngine
from grove.internal.v1 import worker_pb2 as pb
from kvstore.shared_cache import SharedCache


async def reset_prefix_caches(engine: AsyncEngine, kvstore: SharedCache | None, request: pb.ResetPrefixCacheRequest,
                              context: grpc.aio.ServicerContext) -> pb.ResetPrefixCacheResponse:
    cache = engine.engine.prefix_cache
    blocks = await engine.call(cache.clear) if cache is not None else 0
    stored = 0
    if request.kvstore:
        client = kvstore.ready() if kvstore is not None else None
        if client is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this worker's prefix cache was reset, but it has no "
                                                             "kvstore it can reach now to reset")
        assert client is not None
        try:
            stored = await client.clear()
        except grpc.aio.AioRpcError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the kvstore's cache was not reset: {e.details()}")
        except Exception as e:  # noqa: BLE001 - the client's typed errors: said, not hidden
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the kvstore's cache was not reset: {e}")
    return pb.ResetPrefixCacheResponse(blocks=blocks, kvstore_blocks=stored)

"""vLLM's development endpoints, served only in development mode (``VLLM_SERVER_DEV_MODE=1`` or the
gateway's ``--server-dev-mode``, as vLLM serves them): ``POST /reset_prefix_cache``, for a
benchmark that must start cold, or after the cached KV stopped being wanted."""
from __future__ import annotations

import asyncio
import logging

import grpc
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from gateway.core import GatewayCore
from gateway.errors import UnavailableError
from gateway.http_common import error_response
from gateway.router import Worker
from grove.internal.v1 import worker_pb2 as pb

logger = logging.getLogger(__name__)
RESET_TIMEOUT_S = 30.0


def add_dev_routes(app: FastAPI, core: GatewayCore) -> None:
    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> Response:
        """Every worker forgets the prefixes it cached, the kvstore (through the prefill workers)
        drops every block no lease holds, and routing forgets which worker had which prefix.
        Running requests keep their KV. A worker that cannot be reached is a 503 naming it (the
        others were reset)."""
        workers = core.router.workers()

        async def reset(w: Worker) -> pb.ResetPrefixCacheResponse:
            stub = w.prefill if w.role == "prefill" else w.decode
            return await stub.ResetPrefixCache(pb.ResetPrefixCacheRequest(kvstore=w.role == "prefill"),
                                               timeout=RESET_TIMEOUT_S)

        results = await asyncio.gather(*(reset(w) for w in workers), return_exceptions=True)
        core.router.forget_affinity()
        failed = {w.address: r.details() if isinstance(r, grpc.aio.AioRpcError) else str(r)
                  for w, r in zip(workers, results) if isinstance(r, BaseException)}
        done = {w.address: r for w, r in zip(workers, results) if isinstance(r, pb.ResetPrefixCacheResponse)}
        logger.info("prefix caches reset: %s", {a: r.blocks for a, r in done.items()})
        if failed:
            return error_response(UnavailableError("the prefix cache was not reset on " + "; ".join(
                f"{a}: {why}" for a, why in failed.items())))
        return JSONResponse({"workers": {a: {"blocks": r.blocks} for a, r in done.items()},
                             "kvstore_blocks": max((r.kvstore_blocks for r in done.values()), default=0)})

"""vLLM's development and profiling endpoints. In development mode (``VLLM_SERVER_DEV_MODE=1`` or
the gateway's ``--server-dev-mode``, as vLLM serves it): ``POST /reset_prefix_cache``, for a
benchmark that must start cold, or once the cached KV is no longer wanted. With the profiler on
(``VLLM_TORCH_PROFILER_DIR`` set, or ``--enable-profiler``): ``POST /start_profile`` and
``/stop_profile``, torch's profiler on every worker, each writing its trace to its own
``--profiler-dir`` (runtime.profiling)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from engine.errors import InvalidRequestError
from gateway.core import GatewayCore
from gateway.errors import UnavailableError
from gateway.http_common import error_response
from gateway.router import Worker
from grove.internal.v1 import worker_pb2 as pb

logger = logging.getLogger(__name__)
CALL_TIMEOUT_S = 60.0  # a trace of a long profile takes a while to write
T = TypeVar("T")


async def on_every_worker(core: GatewayCore, call: Callable[[Worker, Any], Awaitable[T]]
                          ) -> tuple[dict[str, T], Response | None]:
    """``call(worker, stub)`` on every prefill and decode worker at once (``stub``: its
    WorkerControl): the answers by address, and the error response naming each worker that failed
    (None if none did): a worker's refusal (FAILED_PRECONDITION) is a 400, one out of reach a 503."""
    workers = core.router.workers()
    results = await asyncio.gather(*(call(w, w.control) for w in workers), return_exceptions=True)
    done = {w.address: r for w, r in zip(workers, results) if not isinstance(r, BaseException)}
    failed = [(w, r) for w, r in zip(workers, results) if isinstance(r, BaseException)]
    if not failed:
        return done, None
    why = "; ".join(f"{w.role} worker {w.address}: {r.details() if isinstance(r, grpc.aio.AioRpcError) else r}"
                    for w, r in failed)
    refused = all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.FAILED_PRECONDITION
                  for _, r in failed)
    return done, error_response(InvalidRequestError("workers", why) if refused else UnavailableError(why))


def add_dev_routes(app: FastAPI, core: GatewayCore) -> None:
    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> Response:
        """Every worker forgets the prefixes it cached, the kvstore (through the prefill workers)
        drops every block no lease holds, and routing forgets which worker had which prefix.
        Running requests keep their KV. A worker that cannot be reached is a 503 naming it (the
        others were reset)."""
        async def reset(w: Worker, stub: Any) -> pb.ResetPrefixCacheResponse:
            return await stub.ResetPrefixCache(pb.ResetPrefixCacheRequest(kvstore=w.role == "prefill"),
                                               timeout=CALL_TIMEOUT_S)

        done, failed = await on_every_worker(core, reset)
        core.router.forget_affinity()
        logger.info("prefix caches reset: %s", {a: r.blocks for a, r in done.items()})
        if failed is not None:
            return failed
        return JSONResponse({"workers": {a: {"blocks": r.blocks} for a, r in done.items()},
                             "kvstore_blocks": max((r.kvstore_blocks for r in done.values()), default=0)})


def add_profiler_routes(app: FastAPI, core: GatewayCore) -> None:
    @app.post("/start_profile")
    async def start_profile() -> Response:
        """Every worker starts torch's profiler (a 400 naming those that are profiling already or
        have no --profiler-dir)."""
        done, failed = await on_every_worker(
            core, lambda w, stub: stub.StartProfile(pb.ProfileRequest(), timeout=CALL_TIMEOUT_S))
        return failed or JSONResponse({"workers": sorted(done)})

    @app.post("/stop_profile")
    async def stop_profile() -> Response:
        """Every worker stops its profiler and writes its trace: the trace files by worker."""
        done, failed = await on_every_worker(
            core, lambda w, stub: stub.StopProfile(pb.ProfileRequest(), timeout=CALL_TIMEOUT_S))
        return failed or JSONResponse({"traces": {a: r.trace for a, r in done.items()}})

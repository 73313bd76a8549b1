"""The RPCs every worker answers alike, prefill or decode (grove.internal.v1.WorkerControl, served
beside the role's own service): vLLM's reset of the prefix cache (runtime.prefix_reset), its
profiler (runtime.profiling), weight updates from disk (runtime.weight_loading) and sleep mode
(runtime.sleeping)."""
from __future__ import annotations

from typing import Any

import grpc

from grove.internal.v1 import worker_pb2 as pb
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from runtime.prefix_reset import reset_prefix_caches
from runtime.profiling import WorkerProfiler
from runtime.sleeping import WorkerSleep
from runtime.weight_loading import WorkerWeights


class WorkerControlServicer(pb_grpc.WorkerControlServicer):
    def __init__(self, service: Any, worker_id: str, profiler_dir: str = "") -> None:
        """``service``: the worker's service (its engine, an AsyncEngine, and its kvstore, a
        SharedCache or None)."""
        self.service = service
        self.worker_id = worker_id
        self.profiler = WorkerProfiler(profiler_dir, worker_id)
        self.weights = WorkerWeights()
        self.sleep = WorkerSleep(service.engine)

    async def refuse_if_asleep(self, context: grpc.aio.ServicerContext) -> None:
        """New work on a sleeping worker (the role's servicer asks): UNAVAILABLE, naming what it gave back."""
        if self.sleep.asleep:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.worker_id} is asleep (sleep mode: "
                                                             f"{self.sleep.asleep} given back): POST /wake_up")

    async def ResetPrefixCache(self, request: pb.ResetPrefixCacheRequest,
                               context: grpc.aio.ServicerContext) -> pb.ResetPrefixCacheResponse:
        return await reset_prefix_caches(self.service.engine, self.service.kvstore, request, context)

    async def StartProfile(self, request: pb.ProfileRequest, context: grpc.aio.ServicerContext) -> pb.ProfileResponse:
        return await self.profiler.start(self.service.engine, context)

    async def StopProfile(self, request: pb.ProfileRequest, context: grpc.aio.ServicerContext) -> pb.ProfileResponse:
        return await self.profiler.stop(self.service.engine, context)

    async def _weights_awake(self, context: grpc.aio.ServicerContext) -> None:
        if "weights" in self.sleep.asleep:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.worker_id}'s weights are asleep: wake "
                                                                     "them first (/wake_up?tags=weights)")

    async def LoadWeights(self, request: pb.LoadWeightsRequest,
                          context: grpc.aio.ServicerContext) -> pb.LoadWeightsResponse:
        await self._weights_awake(context)
        return await self.weights.load(self.service.engine, request, context)

    async def CommitWeights(self, request: pb.CommitWeightsRequest,
                            context: grpc.aio.ServicerContext) -> pb.CommitWeightsResponse:
        if not request.discard:
            await self._weights_awake(context)
        return await self.weights.commit(self.service.engine, self.service.kvstore, request, context)

    async def Sleep(self, request: pb.SleepRequest, context: grpc.aio.ServicerContext) -> pb.SleepResponse:
        return await self.sleep.sleep(self.service.kvstore, request, context)

    async def WakeUp(self, request: pb.WakeUpRequest, context: grpc.aio.ServicerContext) -> pb.WakeUpResponse:
        return await self.sleep.wake_up(request, context)

"""The RPCs both workers answer alike, mixed into their servicers: vLLM's reset of the prefix cache
(runtime.prefix_reset), its profiler (runtime.profiling) and weight updates from disk
(runtime.weight_loading)."""
from __future__ import annotations

from typing import Any

import grpc

from grove.internal.v1 import worker_pb2 as pb
from runtime.prefix_reset import reset_prefix_caches
from runtime.profiling import WorkerProfiler
from runtime.weight_loading import WorkerWeights


class WorkerControl:
    service: Any  # the worker's service: its engine (AsyncEngine) and kvstore (SharedCache | None)
    profiler: WorkerProfiler
    weights: WorkerWeights

    async def ResetPrefixCache(self, request: pb.ResetPrefixCacheRequest,
                               context: grpc.aio.ServicerContext) -> pb.ResetPrefixCacheResponse:
        return await reset_prefix_caches(self.service.engine, self.service.kvstore, request, context)

    async def StartProfile(self, request: pb.ProfileRequest, context: grpc.aio.ServicerContext) -> pb.ProfileResponse:
        return await self.profiler.start(self.service.engine, context)

    async def StopProfile(self, request: pb.ProfileRequest, context: grpc.aio.ServicerContext) -> pb.ProfileResponse:
        return await self.profiler.stop(self.service.engine, context)

    async def LoadWeights(self, request: pb.LoadWeightsRequest,
                          context: grpc.aio.ServicerContext) -> pb.LoadWeightsResponse:
        return await self.weights.load(self.service.engine, request, context)

    async def CommitWeights(self, request: pb.CommitWeightsRequest,
                            context: grpc.aio.ServicerContext) -> pb.CommitWeightsResponse:
        return await self.weights.commit(self.service.engine, self.service.kvstore, request, context)

"""vLLM's profiler endpoints as a worker answers them (both workers' ``StartProfile`` and
``StopProfile``): torch's profiler over the engine's steps (CPU, and CUDA where there is a GPU),
started and stopped on the engine's own thread between two steps; the trace goes to the worker's
``--profiler-dir`` (vLLM's ``VLLM_TORCH_PROFILER_DIR``) when it stops, in Chrome's format (open it
in Perfetto or chrome://tracing)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import torch

from engine.async_engine import AsyncEngine
from grove.internal.v1 import worker_pb2 as pb

logger = logging.getLogger(__name__)


class WorkerProfiler:
    def __init__(self, directory: str, name: str) -> None:
        """``directory``: where traces go ("" refuses to profile); ``name``: the worker's, in each file's."""
        self.directory = directory
        self.name = name
        self._profile: torch.profiler.profile | None = None

    async def start(self, engine: AsyncEngine, context: grpc.aio.ServicerContext) -> pb.ProfileResponse:
        if not self.directory:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name} has no profiler directory: start "
                                                                     "it with --profiler-dir (or VLLM_TORCH_PROFILER_DIR)")
        if self._profile is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name} is profiling already")

        def start() -> torch.profiler.profile:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            profile = torch.profiler.profile(activities=activities, record_shapes=True)
            profile.start()
            return profile

        self._profile = await engine.call(start)
        logger.info("profiling started")
        return pb.ProfileResponse()

    async def stop(self, engine: AsyncEngine, context: grpc.aio.ServicerContext) -> pb.ProfileResponse:
        profile, self._profile = self._profile, None
        if profile is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name} is not profiling")
        assert profile is not None
        path = Path(self.directory) / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns()}.pt.trace.json"
        path.parent.mkdir(parents=True, exist_ok=True)

        def stop() -> None:
            profile.stop()
            profile.export_chrome_trace(str(path))

        await engine.call(stop)
        logger.info("profiling stopped: trace in %s", path)
        return pb.ProfileResponse(trace=str(path))

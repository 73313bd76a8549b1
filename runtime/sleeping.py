"""A worker's side of vLLM's sleep mode (both workers' ``Sleep`` and ``WakeUp``; the gateway's
``/sleep`` and ``/wake_up`` drive them, engine.sleep_mode does the work on the engine's thread).
Asleep, the worker refuses new work (UNAVAILABLE) and says so in its stats."""
from __future__ import annotations

import asyncio
import time

import grpc

from engine.async_engine import AsyncEngine
from engine.errors import InvalidRequestError
from engine.sleep_mode import SleepMode
from engine.weight_update import EngineBusyError
from grove.internal.v1 import worker_pb2 as pb
from kvstore.shared_cache import SharedCache

# blocks a pause leaves held for a moment (a handoff's KV until its decode worker releases it, a
# kvstore write under way) are waited for this long before a sleep is refused
HELD_WAIT_S = 5.0


class WorkerSleep:
    def __init__(self) -> None:
        self._mode: SleepMode | None = None

    @property
    def asleep(self) -> list[str]:
        return sorted(self._mode.asleep) if self._mode is not None else []

    def _of(self, engine: AsyncEngine) -> SleepMode:
        if self._mode is None:
            self._mode = SleepMode(engine.engine)
        return self._mode

    async def sleep(self, engine: AsyncEngine, kvstore: SharedCache | None, request: pb.SleepRequest,
                    context: grpc.aio.ServicerContext) -> pb.SleepResponse:
        mode = self._of(engine)
        deadline = time.monotonic() + HELD_WAIT_S
        while True:
            if kvstore is not None:
                await kvstore.settle()
            try:
                return pb.SleepResponse(bytes=await engine.call(mode.sleep, request.level))
            except InvalidRequestError as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, e.message)
            except EngineBusyError as e:
                if time.monotonic() >= deadline:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            await asyncio.sleep(0.05)

    async def wake_up(self, engine: AsyncEngine, request: pb.WakeUpRequest,
                      context: grpc.aio.ServicerContext) -> pb.WakeUpResponse:
        mode = self._of(engine)
        try:
            await engine.call(mode.wake_up, list(request.tags))
        except InvalidRequestError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, e.message)
        return pb.WakeUpResponse(asleep=self.asleep)

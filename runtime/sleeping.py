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
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.mode = SleepMode(engine.engine)

    @property
    def asleep(self) -> list[str]:
        return sorted(self.mode.asleep)

    async def sleep(self, kvstore: SharedCache | None, request: pb.SleepRequest,
                    context: grpc.aio.ServicerContext) -> pb.SleepResponse:
        engine, mode = self.engine, self.mode
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

    async def wake_up(self, request: pb.WakeUpRequest, context: grpc.aio.ServicerContext) -> pb.WakeUpResponse:
        try:
            await self.engine.call(self.mode.wake_up, list(request.tags))
        except InvalidRequestError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, e.message)
        return pb.WakeUpResponse(asleep=self.asleep)

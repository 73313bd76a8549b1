"""Drives an LLMEngine from asyncio: the engine lives on one dedicated thread.

Every call that touches the engine (adding, aborting, allocating blocks, the step itself) runs on
that thread through ``call``, so they are serialised without locks; the event loop stays free for
RPCs and transfers while a step computes.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, TypeVar

from engine.llm_engine import LLMEngine, StepOutput
from engine.sequence import Sequence

logger = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._queues: dict[str, asyncio.Queue[StepOutput | BaseException]] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.step_count = 0

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="engine-loop")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            if not self.engine.has_work:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                outputs = await self.call(self.engine.step)
            except Exception as exc:  # a broken step must fail its requests, not hang them
                logger.exception("engine step failed")
                for q in self._queues.values():
                    q.put_nowait(exc)
                await self.call(self._abort_all)
                continue
            self.step_count += 1
            for out in outputs:
                q = self._queues.get(out.seq.request_id)
                if q is not None:
                    q.put_nowait(out)

    def _abort_all(self) -> None:
        for rid in list(self.engine.seqs):
            self.engine.abort(rid)

    async def run(self, seq: Sequence, running: bool = False) -> AsyncIterator[StepOutput]:
        """Adds ``seq`` and yields its step outputs until it finishes. Leaving early aborts it."""
        q: asyncio.Queue[StepOutput | BaseException] = asyncio.Queue()
        self._queues[seq.request_id] = q
        finished = False
        try:
            await self.call(self.engine.add_sequence, seq, running)
            self._wakeup.set()
            while not finished:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"engine step failed: {item}") from item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(seq.request_id, None)
            if not finished:
                # fire and forget on the engine thread: runs before the next step, even if cancelled
                self._executor.submit(self.engine.abort, seq.request_id)

"""Drives an LLMEngine from asyncio: the engine lives on one dedicated thread that steps on its own.

The engine thread runs a busy loop (vLLM's "engine core" shape): apply the calls queued for it,
step while there is work, hand each step's outputs to the event loop with one
``call_soon_threadsafe``, and step again at once. The engine never waits for the event loop between
steps, so gRPC serialisation and streaming of step N overlap the forward of step N+1.

Every call that touches the engine (adding, aborting, allocating blocks) runs on that thread through
``call`` or ``submit``, between two steps, so they are serialised without locks.

Workers build the engine with ``AsyncEngine.create``, on the thread that steps it. libgomp keeps a
thread pool for every thread that opens a parallel region, and once it manages more threads than
there are CPUs its idle workers stop spinning: each of a step's few hundred regions (matrix
products, attention) then waits for a futex wake. Measured on 2 cores, bf16: a model loaded on the
main thread and stepped on another decoded 15-25% slower, with ~320 voluntary context switches
per token; loaded and stepped on one thread, none, at the main thread's speed. The event loop's
thread then runs its own torch work on one OpenMP thread, so it never grows a second pool.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
from typing import AsyncIterator, Callable, TypeVar

from engine.llm_engine import LLMEngine, StepOutput
from engine.sequence import Sequence

logger = logging.getLogger(__name__)
T = TypeVar("T")

_Job = tuple[Callable[[], object], "asyncio.Future[object] | None"]


class AsyncEngine:
    def __init__(self, engine: LLMEngine | None = None) -> None:
        self.engine: LLMEngine = engine  # type: ignore[assignment]  # None only until create() built it
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._queues: dict[str, asyncio.Queue[StepOutput | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    async def create(cls, build: Callable[[], LLMEngine]) -> "AsyncEngine":
        """Builds the engine on the thread that will step it (see the module doc), starts it, and
        returns once it is ready; ``build``'s exception, if it raises."""
        self = cls()
        loop = self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if not ready.done():
                ready.set_exception(exc) if exc is not None else ready.set_result(None)

        def run() -> None:
            try:
                self.engine = build()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                loop.call_soon_threadsafe(settle, exc)
                return
            loop.call_soon_threadsafe(settle, None)
            self._run_thread()

        self._thread = threading.Thread(target=run, name="engine", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise
        _one_openmp_thread_here()
        return self

    # ---- event-loop side ------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run_thread, name="engine", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Runs ``fn(*args)`` on the engine thread between two steps and returns its result."""
        if self._thread is None:
            raise RuntimeError("AsyncEngine.call before start()")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((lambda: fn(*args), fut))  # type: ignore[arg-type]
        return await fut

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Fire and forget on the engine thread (safe from any thread, and from a cancelled task)."""
        self._jobs.put((lambda: fn(*args), None))

    async def run(self, seq: Sequence, running: bool = False) -> AsyncIterator[StepOutput]:
        """Adds ``seq`` and yields its step outputs until it finishes. Leaving early aborts it."""
        q: asyncio.Queue[StepOutput | BaseException] = asyncio.Queue()
        self._queues[seq.request_id] = q
        finished = False
        try:
            await self.call(self.engine.add_sequence, seq, running)
            while not finished:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"engine step failed: {item}") from item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(seq.request_id, None)
            if not finished:
                self.submit(self.engine.abort, seq.request_id)  # runs before the next step

    def _deliver(self, outputs: list[StepOutput] | BaseException) -> None:
        """On the event loop: route one step's outputs (or its failure) to the waiting requests."""
        if isinstance(outputs, BaseException):
            for q in self._queues.values():
                q.put_nowait(outputs)
            return
        for out in outputs:
            q = self._queues.get(out.seq.request_id)
            if q is not None:
                q.put_nowait(out)

    # ---- engine-thread side ---------------------------------------------------------------
    def _run_thread(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            # between two steps, every call queued so far; with nothing to step, sleep until one comes
            wait = not self.engine.has_work
            while wait or not self._jobs.empty():
                job = self._jobs.get()
                if job is None:
                    return
                self._apply(loop, job)
                wait = False
            if not self.engine.has_work:
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a broken step must fail its requests, not hang them
                logger.exception("engine step failed")
                loop.call_soon_threadsafe(self._deliver, exc)
                self._abort_all()
                continue
            if outputs:
                loop.call_soon_threadsafe(self._deliver, outputs)

    @staticmethod
    def _apply(loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        fn, fut = job
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if fut is None:
                logger.exception("engine job failed")
            else:
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            return
        if fut is not None:
            loop.call_soon_threadsafe(_settle, fut, result, None)

    def _abort_all(self) -> None:
        for rid in list(self.engine.seqs):
            self.engine.abort(rid)


def _settle(fut: asyncio.Future[object], result: object, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _one_openmp_thread_here() -> None:
    """This thread's parallel regions run on one OpenMP thread (the setting is per thread in
    OpenMP; torch's libgomp is the one loaded). No-op where torch does not use libgomp."""
    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(1)
    except (OSError, AttributeError):
        pass

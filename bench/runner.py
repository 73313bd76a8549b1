"""The load generator: sends jobs through a backend in a closed loop (fixed concurrency) or an
open loop (arrivals at a rate), by count or for a duration, and collects the records."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Iterator, NamedTuple, Sequence

from tqdm import tqdm

from bench.arrivals import arrival_offsets
from bench.client import Backend
from bench.config import LoadSpec
from bench.jobs import repeat_jobs
from bench.records import Job, RequestRecord

logger = logging.getLogger(__name__)


class RunOutput(NamedTuple):
    records: list[RequestRecord]  # in completion order
    start: float  # perf_counter when the first request could go
    end: float  # when the last one finished
    max_in_flight: int  # most requests in flight at once


def _source(jobs: Sequence[Job], deadline: float | None) -> Iterator[Job]:
    """Each job once, or (with a deadline) over and over until the deadline passes."""
    if deadline is None:
        yield from jobs
        return
    for job in repeat_jobs(jobs):
        if time.perf_counter() >= deadline:
            return
        yield job


class _Run:
    """Shared state of one run: ordering events, the in-flight cap, the records, the progress bar."""

    def __init__(self, backend: Backend, cap: int | None, bar: tqdm) -> None:
        self.backend = backend
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0  # checked by tests: never above the cap
        self._finished: dict[int, asyncio.Event] = {}
        self._cap = asyncio.Semaphore(cap) if cap else None
        self._bar = bar

    def _event(self, index: int) -> asyncio.Event:
        return self._finished.setdefault(index, asyncio.Event())

    async def one(self, job: Job) -> None:
        # Invariant: a session's turn starts only after its previous turn finished (ok or not),
        # so the prefix it shares with that turn can be in the server's cache.
        if job.after is not None:
            await self._event(job.after).wait()
        async with self._cap if self._cap else contextlib.nullcontext():
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                record = await self.backend.send(job)
            finally:
                self.in_flight -= 1
        if record.error:
            logger.warning("%s: request %s failed: %s", self.backend.name, job.prompt.id, record.error)
        self.records.append(record)
        self._event(job.index).set()
        self._bar.update(1)


async def _closed_loop(run: _Run, source: Iterator[Job], concurrency: int) -> None:
    async def worker() -> None:
        for job in source:  # one shared iterator: each job goes to exactly one worker
            await run.one(job)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


async def _open_loop(run: _Run, source: Iterator[Job], load: LoadSpec, start: float, seed: int) -> None:
    assert load.request_rate is not None
    offsets = arrival_offsets(load.request_rate, load.burstiness, seed)
    async with asyncio.TaskGroup() as tg:
        for offset in offsets:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            job = next(source, None)  # taken at its arrival time, so a deadline is honoured
            if job is None:
                break
            tg.create_task(run.one(job))


async def run_load(backend: Backend, jobs: Sequence[Job], load: LoadSpec, *, duration_s: float | None = None,
                   seed: int = 0, progress: bool = False, desc: str = "") -> RunOutput:
    """Send ``jobs`` (each once, or cycling for ``duration_s``) under ``load``.

    In an open loop with a concurrency cap, an arrival waits client-side for a free slot; its
    latencies are measured from when it is actually sent (as ``vllm bench serve`` does).
    """
    if not jobs:
        raise ValueError("no jobs to run")
    start = time.perf_counter()
    deadline = None if duration_s is None else start + duration_s
    total = None if duration_s is not None else len(jobs)
    with tqdm(total=total, desc=desc or backend.name, unit="req", disable=not progress, leave=False) as bar:
        run = _Run(backend, load.concurrency if load.request_rate is not None else None, bar)
        source = _source(jobs, deadline)
        if load.request_rate is None:
            assert load.concurrency is not None
            await _closed_loop(run, source, load.concurrency)
        else:
            await _open_loop(run, source, load, start, seed)
    end = time.perf_counter()
    logger.info("%s %s: %d requests in %.2f s (max %d in flight)", backend.name, load.label,
                len(run.records), end - start, run.max_in_flight)
    return RunOutput(records=run.records, start=start, end=end, max_in_flight=run.max_in_flight)

"""Which requests the gateway lets run, and how the running ones end when they must:

- capacity: past ``max_concurrent`` requests in flight, a 429;
- pause (vLLM's ``/pause`` and ``/resume``, for weight updates): requests that arrive wait at the
  door until generation resumes; those in flight finish (mode ``wait``) or end at once with what
  they had, finish reason ``abort`` (mode ``abort``), their worker calls cancelled (the workers
  free their KV);
- drain (shutdown): those still running when the drain times out end with UnavailableError.

Every generation and embedding passes through ``enter`` and ``leave``; a generation's stream reads
each chunk through ``next_chunk``, the one place a pause or a drain may stop it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Literal, TypeVar

from gateway.errors import OverloadedError, UnavailableError
from gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)
T = TypeVar("T")
PauseMode = Literal["abort", "wait"]
PAUSE_MODES: tuple[PauseMode, ...] = ("abort", "wait")


class Aborted(Exception):
    """The request's stream was stopped by a pause in mode ``abort``: it ends with what it had."""


def drained() -> UnavailableError:
    """A request's error where the gateway's drain timeout ran out before it finished."""
    return UnavailableError("the gateway shut down before this request finished (its drain timeout ran out); "
                            "send it again")


class Admission:
    def __init__(self, max_concurrent: int, metrics: GatewayMetrics) -> None:
        self.max_concurrent = max_concurrent
        self.metrics = metrics
        self.in_flight = 0
        self._open = asyncio.Event()  # set while generation runs (not paused)
        self._open.set()
        # the tasks streaming a request's output, while they wait for its next chunk (not while the
        # client's server sends one: a cancel there lands in the server's own write)
        self._running: set[asyncio.Task[object]] = set()
        self._aborted: set[asyncio.Task[object]] = set()  # cancelled by a pause: they end, "abort"
        self._aborting = False  # a pause in mode abort is ending what runs
        self._shut = False  # the drain timed out: what still runs ends with an error
        self._closed = False  # draining: requests waiting at a paused door are turned away

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    # ---- a request's life -----------------------------------------------------------------
    def check_capacity(self) -> None:
        """OverloadedError when ``max_concurrent`` requests are in flight (a 429)."""
        if self.in_flight >= self.max_concurrent:
            exc = OverloadedError(f"{self.in_flight} requests in flight (limit {self.max_concurrent})")
            self.metrics.error(exc)
            raise exc

    async def enter(self) -> None:
        """Admits a request: waits while generation is paused, then a 429 past capacity."""
        if self.paused:
            while self.paused:
                await self._open.wait()
            if self._closed:
                raise UnavailableError("the gateway shut down while generation was paused; send it again")
        self.check_capacity()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    async def next_chunk(self, chunks: AsyncIterator[T]) -> T | None:
        """The stream's next chunk (None at its end); Aborted where a pause stops it, the drain's
        UnavailableError where the drain timed out."""
        task = asyncio.current_task()
        assert task is not None
        if self._shut:  # the drain timed out while the client's server was sending a chunk
            raise drained()
        if self._aborting:
            raise Aborted()
        self._running.add(task)  # a pause or the drain cancels it only while it waits here
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            if self._shut:
                task.uncancel()  # cancelled by drain(), not by the client: the client hears why
                raise drained() from None
            if task in self._aborted:
                task.uncancel()
                raise Aborted() from None
            raise
        finally:
            self._running.discard(task)
            self._aborted.discard(task)

    # ---- pause (vLLM's /pause, /resume) ---------------------------------------------------
    async def pause(self, mode: PauseMode) -> None:
        """Closes the door, then returns once no request is in flight: in mode ``wait`` they
        finish, in mode ``abort`` they end now (finish reason "abort"). A resume meanwhile ends
        the wait."""
        self._open.clear()
        if mode == "abort":
            self._aborting = True
            for task in list(self._running):
                self._aborted.add(task)
                task.cancel()
        logger.info("generation paused (%s): %d requests in flight", mode, self.in_flight)
        try:
            while self.in_flight and self.paused:
                await asyncio.sleep(0.02)
        finally:
            self._aborting = False

    def resume(self) -> None:
        if self.paused:
            logger.info("generation resumed")
        self._open.set()

    # ---- shutdown -------------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> None:
        """On shutdown, once the servers take no new requests: the requests in flight get up to
        ``timeout_s`` to finish. Those still running then end with UnavailableError (an SSE error
        event, a 503, gRPC UNAVAILABLE), not a connection cut without a word, and their calls to
        the workers are cancelled (the workers free their KV)."""
        self._closed = True
        self._open.set()  # requests waiting at a paused door: turned away (enter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not self.in_flight:
            return
        logger.warning("drain timeout: %d requests still in flight end with an error", self.in_flight)
        self._shut = True
        for task in list(self._running):
            task.cancel()
        deadline = loop.time() + 5.0  # for their errors to reach the clients
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)

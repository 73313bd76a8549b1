"""Background responses: the Responses API's ``background: true`` (as OpenAI and vLLM serve it).

The request is answered at once with the response queued; the answer is made by a task of the
gateway's own, whatever the client does. ``GET /v1/responses/{id}`` shows it as it goes (queued,
in progress, then completed, incomplete, failed or cancelled); with ``stream=true`` it replays the
response's events after ``starting_after`` and follows the rest as they come, so a client that lost
its stream picks it up where it was. ``POST /v1/responses/{id}/cancel`` stops it: the pipeline's
requests are cancelled and the workers free their KV.

A finished background response that completed is stored like any other (``previous_response_id``
continues it). The runs are kept in the gateway's memory: those still running always, finished
ones up to a bound, the oldest dropped first.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, AsyncIterator, Callable

from engine.errors import InvalidRequestError
from engine.request import GenerationChunk
from gateway.errors import OverloadedError, UnavailableError
from gateway.responses_output import ResponseObject

logger = logging.getLogger(__name__)

Chunks = AsyncIterator[tuple[int, GenerationChunk]]

# the Responses API's error codes for what ends a background response
_CODES: dict[type[Exception], str] = {
    InvalidRequestError: "invalid_prompt", OverloadedError: "rate_limit_exceeded", UnavailableError: "server_error",
}


class BackgroundRun:
    """One background response: its task, and every event it has made (a stream's replay).
    Invariant: ``events[k]["sequence_number"] == k``: every event the response makes is kept."""

    def __init__(self, obj: ResponseObject, chunks: Chunks, done: Callable[[ResponseObject], None],
                 rename: Callable[[InvalidRequestError], InvalidRequestError]) -> None:
        """``done``: called with the response once it completed (to store it); ``rename``: a
        worker's field name as the client's request names it."""
        self.obj = obj
        self.events: list[dict[str, Any]] = []
        self._more = asyncio.Event()  # set when events are added or the run ends; then replaced
        self.finished = False
        obj.queued = True
        self._keep(obj.announced())
        self._task = asyncio.create_task(self._run(chunks, done, rename), name=f"background {obj.id}")

    def _keep(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        self.events += events
        self._more.set()
        self._more = asyncio.Event()

    async def _run(self, chunks: Chunks, done: Callable[[ResponseObject], None],
                   rename: Callable[[InvalidRequestError], InvalidRequestError]) -> None:
        obj = self.obj
        try:
            async for _, c in chunks:
                if obj.queued:
                    self._keep(obj.started())
                self._keep(obj.add(c.text, c.finish_reason, c.usage, c.tokens, c.stop_reason))
            done(obj)
            self._keep(obj.closing())
        except (InvalidRequestError, OverloadedError, UnavailableError) as e:
            logger.info("background response %s failed: %s", obj.id, e)
            error = rename(e) if isinstance(e, InvalidRequestError) else e
            self._keep(obj.failed(error, next(c for t, c in _CODES.items() if isinstance(e, t))))
        except asyncio.CancelledError:
            obj.cancelled()  # its pipeline requests are cancelled as the chunks close
        except Exception as e:  # noqa: BLE001 - a fault of the gateway's: the response says so, not a silent hang
            logger.exception("background response %s failed", obj.id)
            self._keep(obj.failed(e, "server_error"))
        finally:
            await chunks.aclose()
            self.finished = True
            self._more.set()

    def cancel(self) -> None:
        """Stops the response if it is still running (its status: cancelled); else nothing."""
        if not self.finished:
            self._task.cancel()

    async def wait(self) -> None:
        """Until the run has ended (its task and the clean-up of its requests)."""
        await asyncio.wait({self._task})

    async def follow(self, after: int = -1) -> AsyncIterator[dict[str, Any]]:
        """The events after sequence number ``after``, then each as it comes, until the run ends."""
        k = max(after + 1, 0)
        while True:
            while k < len(self.events):
                yield self.events[k]
                k += 1
            if self.finished:
                return
            await self._more.wait()


class BackgroundRuns:
    """The gateway's background responses by id: running ones, and up to ``size`` finished ones."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._runs: OrderedDict[str, BackgroundRun] = OrderedDict()

    def start(self, obj: ResponseObject, chunks: Chunks, done: Callable[[ResponseObject], None],
              rename: Callable[[InvalidRequestError], InvalidRequestError]) -> BackgroundRun:
        run = BackgroundRun(obj, chunks, done, rename)
        self._runs[obj.id] = run
        finished = [k for k, r in self._runs.items() if r.finished]
        for k in finished[:max(len(finished) - self.size, 0)]:
            del self._runs[k]
        return run

    def get(self, response_id: str) -> BackgroundRun | None:
        return self._runs.get(response_id)

    def check_finished(self, response_id: Any) -> None:
        """A request continuing ``response_id`` (its ``previous_response_id``) needs it finished."""
        run = self._runs.get(response_id) if isinstance(response_id, str) else None
        if run is not None and not run.finished:
            raise InvalidRequestError("previous_response_id", f"response {response_id!r} is still {run.obj.status}; "
                                                              "continue it once it has completed")

    def drop(self, response_id: str) -> bool:
        """Forgets a run (cancelled first if still running); whether there was one."""
        run = self._runs.pop(response_id, None)
        if run is not None:
            run.cancel()
        return run is not None

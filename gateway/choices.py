"""Several choices in one OpenAI request (``n`` samples of each prompt, a list of prompts): one
pipeline request per choice, their streams merged into one.

A prompt's first sample goes alone; its other samples start once it has its first token, so their
prefills find the prompt's KV in the prefix caches (vLLM prefills a prompt once for its n samples)
rather than computing it n times side by side.

A request's choices may be more than its prefill workers take at once (``n`` up to the gateway's
limit, 256; a prefill worker takes ``--max-waiting``, 256 by default, other requests' included): a
choice that every worker refuses while others of its request are in their prefills waits for one
of them to end and tries again, rather than failing the request with a 429 that its own choices
caused.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from engine.request import GenerationChunk, LoraRef, Usage, WorkRequest
from engine.sampling_params import SamplingParams
from gateway.core import GatewayCore, detach

_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Choice:
    index: int  # in the response: prompt i's sample j of n is i * n + j
    prompt: int  # i
    first: bool  # j == 0: started at once; its prompt's other samples after its first token
    work: WorkRequest
    thinks: bool = False  # a reasoning model thinks before its grammar applies (gateway.reasoned)


def plan_choices(core: GatewayCore, prompts: Sequence[list[int]], params: SamplingParams, n: int,
                 request_id: str, priority: int = 0, cache_salt: str = "", chat: bool = False,
                 lora: LoraRef | None = None) -> list[Choice]:
    """One request per sample; with a seed, sample j samples with seed + j (as vLLM's n does), so
    the first equals the same request with n = 1. Request ids: ``request_id`` for the only choice,
    with ``-index`` appended where there are several. Every choice has the request's priority,
    cache salt and LoRA adapter. ``chat``: a chat's answer may think before its grammar (GatewayCore.thinks_first)."""
    choices = []
    for i, ids in enumerate(prompts):
        for j in range(n):
            index = i * n + j
            p = params if params.seed is None or j == 0 else dataclasses.replace(params, seed=(params.seed + j) & _SEED_MASK)
            rid = request_id if len(prompts) * n == 1 else f"{request_id}-{index}"
            choices.append(Choice(index, i, j == 0, core.work(ids, p, rid, priority, cache_salt, lora),
                                  chat and core.thinks_first(ids, p)))
    return choices


class PrefillTurns:
    """A request's choices in their prefills. ``room`` is the ``GatewayCore.generate`` argument of
    each: a choice refused for lack of room waits for another to leave its prefill (the worker
    answers it, which frees its place there); where every other one is waiting too, none will.
    Each choice that leaves wakes the longest waiting one only: one place for one try."""

    def __init__(self) -> None:
        self.prefilling = 0  # choices started whose first token has not come, the waiting ones too
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def started(self) -> None:
        self.prefilling += 1

    def left(self) -> None:
        self.prefilling -= 1
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # (a cancelled one is passed over)
                turn.set_result(None)
                return

    async def room(self) -> bool:
        if self.prefilling - len(self._waiting) <= 1:  # no other choice is in a worker's prefill
            return False
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        finally:
            if turn in self._waiting:
                self._waiting.remove(turn)
        return True


def total_usage(choices: Sequence[Choice], usages: dict[int, Usage]) -> Usage:
    """Each prompt's tokens once (as its first sample read them; the others hit its cache), every
    choice's output."""
    total = Usage()
    for c in choices:
        u = usages.get(c.index)
        if u is None:
            continue
        if c.first:
            total.prompt_tokens += u.prompt_tokens
            total.cached_tokens += u.cached_tokens
        total.completion_tokens += u.completion_tokens
        total.draft_tokens += u.draft_tokens
        total.accepted_tokens += u.accepted_tokens
    return total


async def merged(core: GatewayCore, choices: Sequence[Choice], arrived: float | None = None,
                 ) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """(choice index, chunk) as the choices stream; each choice's last chunk carries its finish
    reason and usage. The first error of any choice is raised; an error or leaving early cancels
    every choice still running (their pipeline requests free their KV)."""
    if len(choices) == 1:  # the common case streams straight through, no task between
        gen = core.generate(choices[0].work, arrived, thinks=choices[0].thinks)
        try:
            async for c in gen:
                yield choices[0].index, c
        finally:
            await gen.aclose()
        return
    queue: asyncio.Queue[tuple[Choice, GenerationChunk | None, Exception | None]] = asyncio.Queue()
    turns = PrefillTurns()

    async def pump(choice: Choice) -> None:
        turns.started()
        prefilling = True
        try:
            async for c in core.generate(choice.work, arrived, turns.room, choice.thinks):
                if prefilling:
                    prefilling = False
                    turns.left()
                await queue.put((choice, c, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((choice, None, e))
            return
        finally:
            if prefilling:
                turns.left()
        await queue.put((choice, None, None))  # finished

    waiting: dict[int, list[Choice]] = {}  # prompt -> its samples after the first, until it has a token
    for c in choices:
        if not c.first:
            waiting.setdefault(c.prompt, []).append(c)
    tasks = [asyncio.create_task(pump(c)) for c in choices if c.first]
    running = len(tasks)
    try:
        while running:
            choice, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                running -= 1
                continue
            for c in waiting.pop(choice.prompt, []):
                tasks.append(asyncio.create_task(pump(c)))
                running += 1
            yield choice.index, chunk
    finally:
        # cancelled once each, not awaited: the client's cancel scope would cancel an await here
        # again, and the choices' clean-up (their KV's release) with it
        for t in tasks:
            if not t.done():
                t.cancel()
                detach(t)

"""The decode worker's logic: take a handoff, pull its KV, join the batch, stream the output, then
share the blocks it generated with the kvstore (a chat's next turn holds this answer in its prompt)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import AsyncIterator

from engine.async_engine import AsyncEngine
from engine.errors import InvalidRequestError, OutOfBlocksError
from engine.request import GenerationChunk, KVHandle, TokenOut, Usage, WorkRequest
from engine.sequence import Sequence
from decode_worker.kv_puller import KVPuller
from kvstore.shared_cache import SharedCache
from runtime.engine_metrics import ServiceMetric
from runtime.worker_process import ShuttingDownError

logger = logging.getLogger(__name__)

ADMIT_WAIT_S = 120.0  # how long a handoff waits for room in the batch (its KV's lease renewed meanwhile)
ADMIT_POLL_S = 0.01


class DecodeService:
    def __init__(self, engine: AsyncEngine, puller: KVPuller, max_requests: int,
                 kvstore: SharedCache | None = None, admit_wait_s: float = ADMIT_WAIT_S) -> None:
        self.engine = engine
        self.puller = puller
        self.kvstore = kvstore  # gets what this worker generated: a chat's next turn finds its answer
        self.max_requests = max_requests
        self.admit_wait_s = admit_wait_s
        self._queue: deque[asyncio.Event] = deque()  # handoffs waiting for blocks, in arrival order
        self.block_waits = 0  # handoffs that found too few free blocks and waited
        self.in_flight = 0
        self.draining = False  # runtime.worker_process.Drainable
        self.local_prefix_blocks = 0
        self.fetched_blocks = 0
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def eng(self):  # noqa: ANN201 - the LLMEngine, touched only through self.engine.call
        return self.engine.engine

    def _reserve(self, seq: Sequence, kv: KVHandle) -> tuple[int, list[int]] | None:
        """On the engine thread: the prompt's blocks this worker still caches from earlier requests
        (not pulled again), then new blocks for the rest, all in ``seq.block_table`` at once, so
        freeing the sequence gives back both. Returns (blocks reused, the new blocks), or None
        (holding nothing) while the batch has no room: fewer blocks free than the rest needs plus
        a margin (vLLM's watermark: admitted with none, the next step preempts someone), or a
        preempted sequence of this worker waiting for blocks (it goes first)."""
        eng = self.eng
        sched, alloc = eng.scheduler, eng.allocator
        if sched.waiting:
            return None
        sched.reuse_prefix(seq, kv.num_tokens)
        have = len(seq.block_table)
        need = len(kv.block_ids) - have
        margin = max(1, alloc.num_blocks // 100) if sched.running else 0
        if need + margin > alloc.num_free:
            sched.free(seq)  # its cached prefix stays cached
            return None
        blocks = alloc.allocate(need)
        seq.block_table = seq.block_table + blocks
        return have, blocks

    async def _reserve_waiting(self, seq: Sequence, kv: KVHandle) -> tuple[int, list[int]]:
        """``_reserve``, waiting for the batch to make room (a running request to finish) behind
        the handoffs that came first, up to ``admit_wait_s``; then RESOURCE_EXHAUSTED, and the
        gateway tries another decode worker. The prefill worker holds the KV meanwhile: the wait
        renews its lease every third of its time. Only the queue's head tries for room, once a
        step; the others sleep until they are the head (or a renewal is due)."""
        if not self._queue:
            got = await self.engine.call(self._reserve, seq, kv)
            if got is not None:
                return got
        head = asyncio.Event()  # set when this handoff is first in the queue
        self._queue.append(head)
        if self._queue[0] is head:
            head.set()
        self.block_waits += 1
        loop = asyncio.get_running_loop()
        start = renewed = loop.time()
        try:  # (the handoff leaves the queue however the wait ends: a lease gone, a cancel)
            renew_every = max((await self.puller.renew(kv)) / 3, ADMIT_POLL_S)
            while (now := loop.time()) - start < self.admit_wait_s:
                if now - renewed >= renew_every:
                    renew_every, renewed = max((await self.puller.renew(kv)) / 3, ADMIT_POLL_S), now
                if head.is_set():  # each try also waits for the step under way
                    got = await self.engine.call(self._reserve, seq, kv)
                    if got is not None:
                        return got
                    await asyncio.sleep(ADMIT_POLL_S)
                    continue
                wake = min(renewed + renew_every, start + self.admit_wait_s) - now
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(head.wait(), max(wake, 0.0))
        finally:
            first = self._queue[0] is head
            self._queue.remove(head)
            if first and self._queue:
                self._queue[0].set()
        free, total = self.eng.allocator.num_free, self.eng.allocator.num_blocks
        raise OutOfBlocksError(f"decode worker has no room for {len(kv.block_ids)} KV blocks ({free} of {total} free) "
                               f"after waiting {self.admit_wait_s:g} s")

    async def _admit(self, req: WorkRequest, first: TokenOut, first_text: str, kv: KVHandle) -> Sequence:
        eng = self.eng
        if kv.compat_key != eng.layout.compat_key():
            raise InvalidRequestError("kv.compat_key", "KV layout differs from this worker's (model/dtype/block size)")
        known = len(req.prompt_ids) + len(req.resume_ids)  # the tokens whose KV the prefill computed
        if kv.num_tokens != known:
            raise InvalidRequestError("kv.num_tokens", f"{kv.num_tokens} != the {known} tokens of the prompt "
                                                       "(and of the output a resumed request has)")
        seq: Sequence = await self.engine.call(eng.make_sequence, req.request_id, list(req.prompt_ids), req.params,
                                               req.priority, req.cache_salt, req.resume_ids, req.lora)
        seq.seed = req.seed
        released = False
        try:
            have, blocks = await self._reserve_waiting(seq, kv)
            if await self.puller.pull(kv, blocks, first=have) == "nixl":
                released = True  # asked, whatever the answer
                await self.puller.release(kv, confirm=True)  # the blocks read were still this request's
        except BaseException:
            # queued after _reserve, so it frees whatever _reserve took even when the request was
            # cancelled while waiting for it; submit, not call: an await in a cancelled task may not run
            self.engine.submit(eng.scheduler.free, seq)
            raise
        finally:
            if not released:  # in the background: the request need not wait for it
                task = asyncio.create_task(self.puller.release(kv))
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)
        self.local_prefix_blocks += have
        self.fetched_blocks += len(blocks)
        seq.num_cached = known
        reason = seq.append_token(first.token_id)  # same detokenizer state as the prefill side
        assert reason is None, "a request finished by its first token never reaches decode"
        seq.detok.emitted += len(first_text)  # the gateway already streamed the first token's text
        return seq

    def _kept_blocks(self, seq: Sequence) -> list[int]:
        """On the engine thread, once ``seq`` has finished: the blocks still holding its KV, from
        its first on (its full blocks stay in the prefix cache until recycled), a reference each
        for the caller. Every hashed block was computed: the hashes stop at the last full block
        of the tokens whose KV was written."""
        cache = self.eng.scheduler.prefix_cache
        return cache.match(seq.block_hashes, 0) if cache is not None else []

    async def _write_generated(self, seq: Sequence, kvstore: SharedCache) -> None:
        if kvstore.ready() is None:
            return  # the store is away
        blocks = await self.engine.call(self._kept_blocks, seq)
        kvstore.write_back(self.engine, seq.all_ids, blocks, seq.cache_salt, owned=True)

    def pending(self) -> int:
        return self.in_flight

    async def decode(self, req: WorkRequest, first: TokenOut, first_text: str, kv: KVHandle) -> AsyncIterator[GenerationChunk]:
        if self.draining:
            raise ShuttingDownError("decode worker is shutting down")
        if self.in_flight >= self.max_requests:
            raise OutOfBlocksError(f"decode worker has {self.in_flight} requests (limit {self.max_requests})")
        self.in_flight += 1
        try:
            seq = await self._admit(req, first, first_text, kv)
            async for out in self.engine.run(seq, running=True):
                tokens = out.token_outs()  # (the step's own: seq.logprobs may have grown since)
                # this worker's lookahead totals so far, on every chunk: a stream resumed elsewhere
                # keeps what it drafted here
                usage = Usage(draft_tokens=out.draft_tokens, accepted_tokens=out.accepted_tokens)
                yield GenerationChunk(out.delta_text, tokens, seq.finish_reason if out.finished else None, usage,
                                      stop_reason=seq.detok.stop_reason if out.finished else None)
            if self.kvstore is not None:  # a task of its own: the stream's end may cancel this one
                self.kvstore.in_background(self._write_generated(seq, self.kvstore))
        finally:
            self.in_flight -= 1

    def stats(self) -> dict[str, int]:
        eng = self.eng
        return {
            "num_running": len(eng.scheduler.running), "num_waiting": len(eng.scheduler.waiting) + len(self._queue),
            "free_blocks": eng.allocator.num_free, "total_blocks": eng.allocator.num_blocks, "held_leases": 0,
            "local_prefix_blocks": self.local_prefix_blocks, "fetched_blocks": self.fetched_blocks,
            "max_model_len": eng.max_model_len,
            "kvstore_failures": self.kvstore.failures if self.kvstore is not None else 0,
        }

    def metrics(self) -> list[ServiceMetric]:
        own = [ServiceMetric("gauge", "grove:handoffs_waiting_for_blocks",
                             "Handed-over requests waiting for KV blocks before their KV is pulled.",
                             len(self._queue)),
               ServiceMetric("counter", "grove:handoff_block_waits",
                             "Handed-over requests that found too few free KV blocks and waited.", self.block_waits),
               ServiceMetric("counter", "grove:kv_handoff_nixl_fallbacks",
                             "NIXL reads of handed-over KV that failed (redone over gRPC unless timed out; that "
                             "holder's KV then comes over gRPC for a while).", self.puller.nixl_fallbacks),
               ServiceMetric("counter", "grove:kv_handoff_grpc_bytes",
                             "Bytes of handed-over KV pulled over gRPC (the fallback data plane).",
                             self.puller.grpc.bytes)]
        return own + (self.kvstore.metrics() if self.kvstore is not None else [])

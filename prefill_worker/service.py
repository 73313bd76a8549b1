"""The prefill worker's logic: prefix from the kvstore, compute the rest, first token, hold the KV.

    Prefill: match kvstore -> read hit blocks into local blocks -> engine prefill (chunked) of the
             remainder -> first token -> write new full blocks back (background) -> lease the KV
    ReleaseKV / lease expiry: frees the held blocks (RenewKV: a decode worker waiting for room keeps them)

The kvstore is a cache: when it fails, the request computes what it would have read
(kvstore.shared_cache).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from engine.async_engine import AsyncEngine
from engine.llm_engine import StepOutput
from engine.pooling import PoolingParams
from engine.request import KVHandle, TokenOut, WorkRequest
from engine.sequence import Sequence
from kvstore.shared_cache import SharedCache
from prefill_worker.kv_leases import KVLeases
from runtime.engine_metrics import ServiceMetric
from runtime.kv_transfer import POOL_NAME
from runtime.worker_process import ShuttingDownError

logger = logging.getLogger(__name__)


class OverloadedError(RuntimeError):
    """Too many requests waiting (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True, slots=True)
class PrefillResult:
    first: TokenOut
    text: str
    finish_reason: str | None
    cached_tokens: int
    kv: KVHandle | None  # None when the request already finished
    prompt_logprobs: tuple[TokenOut, ...] = ()  # prompt tokens 1.., when the request asked
    stop_reason: str | int | None = None  # what stopped it on its first token (engine.detokenizer)


class PrefillService:
    def __init__(self, engine: AsyncEngine, address: str, kvstore: SharedCache | None, plane: object | None,
                 lease_ttl_s: float, max_waiting: int) -> None:
        self.engine = engine
        self.address = address
        self.kvstore = kvstore
        self.plane = plane  # kvstore.nixl_plane.NixlPlane | None
        self.leases = KVLeases(lease_ttl_s)
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.draining = False  # runtime.worker_process.Drainable
        self.local_prefix_blocks = 0
        self.fetched_blocks = 0

    @property
    def eng(self):  # noqa: ANN201 - the LLMEngine, touched only through self.engine.call
        return self.engine.engine

    async def _reuse_prefix(self, seq: Sequence) -> None:
        """Starts ``seq`` on its longest cached prefix: this worker's own cache first, then the
        kvstore for the blocks beyond it (as many as there are free blocks for)."""
        eng, prompt = self.eng, seq.all_ids  # the prompt (and a resumed request's output so far)
        bs = eng.config.block_size
        await self.engine.call(eng.scheduler.reuse_prefix, seq)
        have = len(seq.block_table)
        self.local_prefix_blocks += have
        # at least the last prompt token must be computed here to sample the first token
        usable = (len(prompt) - 1) // bs
        if self.kvstore is None or have >= usable or seq.computes_whole_prompt:
            return  # (prompt logprobs, some pooling: every prompt token is computed here)
        client = self.kvstore.ready()
        if client is None:
            return  # the store is away: compute the rest
        try:
            hit = await client.match(prompt, cache_salt=seq.cache_salt)
        except Exception as exc:  # noqa: BLE001 - a cache miss, not a failed request
            self.kvstore.failed("match", exc)
            return
        try:
            # into as many blocks as the prompts queued before it leave free (the pool may be full
            # of KV that decode workers have yet to take): the rest is computed once there is room
            blocks = await self.engine.call(self._take_free, seq, len(hit.handles[have:usable]))
            if not blocks:
                return
            extra = hit.handles[have:have + len(blocks)]
            try:
                await client.read(hit._replace(handles=extra), blocks)
            except Exception as exc:  # (cancelled: the caller frees the sequence's blocks, these too)
                await self.engine.call(self._drop_tail, seq, len(blocks))
                self.kvstore.failed("read", exc)
                return
            self.fetched_blocks += len(blocks)
            seq.num_cached = len(seq.block_table) * bs
        finally:
            if hit.lease_id:  # in the background: a store gone slow holds no request up
                self.kvstore.release(hit.lease_id)

    def _take_free(self, seq: Sequence, n: int) -> list[int]:
        """On the engine thread: up to ``n`` blocks for KV read from the kvstore, of those free
        beyond what the prompts ahead of it still need, appended to ``seq.block_table`` (so they
        are freed with it whatever happens to the awaiting request)."""
        alloc = self.eng.allocator
        blocks = alloc.allocate(max(0, min(n, alloc.num_free - self.eng.scheduler.blocks_promised())))
        seq.block_table += blocks
        return blocks

    def _drop_tail(self, seq: Sequence, n: int) -> None:
        """On the engine thread: frees the last ``n`` blocks of ``seq.block_table`` (a failed read)."""
        self.eng.allocator.free(seq.block_table[-n:])
        del seq.block_table[-n:]

    def pending(self) -> int:
        """Prefills in flight and KV no decode worker has taken yet: a drain waits for both."""
        return self.in_flight + len(self.leases)

    def _admit(self) -> None:
        if self.draining:
            raise ShuttingDownError("prefill worker is shutting down")
        if self.in_flight >= self.max_waiting:
            raise OverloadedError(f"prefill worker has {self.in_flight} requests in flight (limit {self.max_waiting})")

    async def prefill(self, req: WorkRequest) -> PrefillResult:
        self._admit()
        self.in_flight += 1
        try:
            return await self._prefill(req)
        finally:
            self.in_flight -= 1

    async def embed(self, req: WorkRequest, pooling: PoolingParams) -> tuple[list[float], int]:
        """The embeddings API: the prompt's pooled vector (engine.pooling) and the prompt tokens read
        from a prefix cache. Its KV is shared with the kvstore like a prefill's, then freed."""
        self._admit()
        self.in_flight += 1
        try:
            seq, _ = await self._compute(req, pooling)
            self._write_back(list(seq.all_ids), list(seq.block_table), seq.cache_salt, owned=True)
            assert seq.embedding is not None
            return seq.embedding, seq.num_cached_prompt
        finally:
            self.in_flight -= 1

    async def _compute(self, req: WorkRequest, pooling: PoolingParams | None = None) -> tuple[Sequence, StepOutput | None]:
        """Runs the request's prompt, from its longest cached prefix, to its first token (or, with
        ``pooling``, to its vector); its blocks stay held for the caller."""
        seq: Sequence = await self.engine.call(self.eng.make_sequence, req.request_id, list(req.prompt_ids), req.params,
                                               req.priority, req.cache_salt, req.resume_ids, req.lora, pooling)
        seq.seed = req.seed
        seq.hold_kv = True
        out = None
        try:
            await self._reuse_prefix(seq)
            async for out in self.engine.run(seq):
                pass
        except BaseException:
            # runs after AsyncEngine.run's abort on the engine thread; frees what abort could not;
            # submit, not call: an await in a cancelled task may not run
            self.engine.submit(self._free_if_detached, seq)
            raise
        return seq, out

    async def _prefill(self, req: WorkRequest) -> PrefillResult:
        seq, out = await self._compute(req)
        prompt = [*req.prompt_ids, *req.resume_ids]  # every token whose KV this prefill computed
        assert out is not None and out.new_tokens
        cached = seq.num_cached_prompt  # prompt tokens reused or read, not computed, when the batch took it
        first = out.token_outs()[0]
        prompt_lps = tuple(TokenOut(t, lp, tuple(ids), tuple(lps), rank)
                           for t, (lp, rank, ids, lps) in zip(prompt[1:], seq.prompt_logprobs))
        held = list(seq.block_table)
        if seq.finish_reason is not None:  # finished on its first token: the write-back frees the blocks
            self._write_back(prompt, held, seq.cache_salt, owned=True)
            return PrefillResult(first, out.delta_text, seq.finish_reason, cached, None, prompt_lps,
                                 seq.detok.stop_reason)
        self._write_back(prompt, held, seq.cache_salt)
        lease_id = self.leases.hold(held)
        return PrefillResult(first, out.delta_text, None, cached, self._handle(lease_id, held, len(prompt)), prompt_lps)

    def _free_if_detached(self, seq: Sequence) -> None:
        if seq.request_id not in self.eng.seqs and seq.block_table:
            self.eng.scheduler.free(seq)

    def _handle(self, lease_id: str, blocks: list[int], num_tokens: int) -> KVHandle:
        layout = self.eng.layout
        h = KVHandle(self.address, lease_id, tuple(blocks), num_tokens, layout.compat_key(), layout.block_bytes)
        if self.plane is None:
            return h
        info = self.plane.export(POOL_NAME)
        return dataclasses.replace(h, nixl_agent=info.agent, pool_name=info.name, base_addr=info.base_addr,
                                   num_blocks=info.num_blocks, mem_type=info.mem_type, device_id=info.device_id)

    def _write_back(self, prompt: list[int], blocks: list[int], cache_salt: str, owned: bool = False) -> None:
        """Shares the prompt's full blocks with the kvstore in the background (does not delay TTFT).
        ``owned``: the caller hands over its reference on ``blocks`` (freed once written)."""
        if self.kvstore is not None:
            self.kvstore.write_back(self.engine, prompt, blocks, cache_salt, owned)
        elif owned:
            self.engine.submit(self.eng.allocator.free, blocks[::-1])

    async def release(self, lease_id: str) -> bool:
        held = self.leases.pop(lease_id)
        if held is None:
            return False
        # the answer is known once the lease is gone; the blocks go back at the engine's next turn.
        # Not awaited: a decode worker's confirmation would wait behind the step under way, and on
        # a slow CPU (an AVX2-only EPYC, six workers on two cores) a long prefill's step outlasted
        # its 10 s deadline, so KV it had read was thrown away and the prompt prefilled again
        self.engine.submit(self.eng.allocator.free, held.blocks)
        return True

    def renew(self, lease_id: str) -> bool:
        """A decode worker waits for room before it pulls: the KV stays held ``lease_ttl`` more."""
        return self.leases.renew(lease_id)

    async def reap_expired(self) -> int:
        expired = self.leases.pop_expired()
        for held in expired:
            logger.warning("KV lease expired unclaimed: freeing %d blocks", len(held.blocks))
            await self.engine.call(self.eng.allocator.free, held.blocks)
        return len(expired)

    def check_blocks(self, lease_id: str, block_ids: list[int]) -> list[int]:
        held = self.leases.get(lease_id)
        if held is None:
            raise KeyError(f"KV lease {lease_id} is unknown, released or expired")
        if not set(block_ids) <= set(held.blocks):
            raise ValueError("requested blocks are not held under this lease")
        return block_ids

    def stats(self) -> dict[str, int]:
        eng = self.eng
        return {
            "num_running": len(eng.scheduler.running), "num_waiting": len(eng.scheduler.waiting) + self.in_flight,
            "free_blocks": eng.allocator.num_free, "total_blocks": eng.allocator.num_blocks,
            "held_leases": len(self.leases),
            "local_prefix_blocks": self.local_prefix_blocks, "fetched_blocks": self.fetched_blocks,
            "max_model_len": eng.max_model_len,
            "kvstore_failures": self.kvstore.failures if self.kvstore is not None else 0,
        }

    def metrics(self) -> list[ServiceMetric]:
        return self.kvstore.metrics() if self.kvstore is not None else []

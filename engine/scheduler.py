"""Continuous batching: which sequences run this step, with how many tokens, in which blocks.

Each step: every decoding sequence gets its next token (plus draft tokens a proposer adds later),
then prompt chunks fill the rest of the token budget (chunked prefill), so a new request joins the
batch without stalling the running ones. When blocks run out the newest sequence of the lowest
priority is preempted (its blocks freed, recomputed later). Waiting sequences go in by priority
(vLLM's: lower first), then by arrival; with every priority equal that is first come, first served.
"""
from __future__ import annotations

import bisect
import itertools
import logging
from dataclasses import dataclass

from engine.block_allocator import BlockAllocator
from engine.prefix_cache import PrefixCache, block_hashes
from engine.sequence import Sequence, SeqStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512  # token budget of one step (prefill chunk size)
    block_size: int = 16
    # vLLM's --max-loras: distinct LoRA adapters among the running sequences (each adds its own
    # products to every step); a request of another adapter waits, and those after it go on
    max_loras: int = 4

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1 or self.max_loras < 1:
            raise ValueError(f"invalid scheduler config {self}")


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # new tokens computed this step: all_ids[num_cached : num_cached + num_tokens]
    samples: bool  # the step reaches the sequence's last known token, so it samples the next one
    # of num_tokens, the draft tokens granted to a decoding sequence (its lookahead tree: the step's
    # input is then its last token and the tree, not all_ids); 0 for a prompt chunk or a recompute,
    # even one whose length happens to equal its dropped draft's
    num_draft_tokens: int = 0

    @classmethod
    def of(cls, seq: Sequence, num_tokens: int, num_draft_tokens: int = 0) -> "ScheduledSeq":
        samples = seq.num_cached + num_tokens >= seq.num_tokens and seq.pooler is None  # (pooling samples nothing)
        return cls(seq, num_tokens, samples, num_draft_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: BlockAllocator, prefix_cache: PrefixCache | None = None) -> None:
        self.config = config
        self.allocator = allocator
        self.prefix_cache = prefix_cache
        self.waiting: list[Sequence] = []  # by (priority, arrival)
        self.running: list[Sequence] = []  # by admission
        self.num_preemptions = 0
        self._arrivals = itertools.count()

    def add(self, seq: Sequence) -> None:
        self._arrive(seq)
        self._enqueue(seq)

    def _arrive(self, seq: Sequence) -> None:
        """Numbers a sequence on its first arrival (kept through preemptions: its place among equals)."""
        if seq.arrival < 0:
            seq.arrival = next(self._arrivals)

    def _enqueue(self, seq: Sequence) -> None:
        """Into the waiting list at its place: after every sequence of a lower priority value or of
        the same one that arrived earlier (a preempted sequence keeps its arrival, so it goes back
        ahead of those that came after it)."""
        bisect.insort(self.waiting, seq, key=lambda s: (s.priority, s.arrival))

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        bs = self.config.block_size
        return max(0, -(-(seq.num_cached + num_tokens) // bs) - len(seq.block_table))

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        need = self._blocks_needed(seq, num_tokens)
        if need > self.allocator.num_free:
            return False
        seq.block_table.extend(self.allocator.allocate(need))
        return True

    def free(self, seq: Sequence) -> None:
        """Give back the sequence's blocks (finish, abort or preemption); tail first, so cached
        prefixes outlive their tails."""
        if seq.block_table:
            self.allocator.free(reversed(seq.block_table))
        seq.block_table = []
        seq.num_cached = 0
        seq.num_registered = 0

    # ---- prefix cache -----------------------------------------------------------------------
    def reuse_prefix(self, seq: Sequence, max_tokens: int | None = None) -> int:
        """Starts a sequence with no blocks on the longest locally cached prefix of its tokens.

        At most ``max_tokens`` (default: all but the last token, which must be computed to sample
        the next one). Returns the tokens reused; the blocks join ``seq.block_table``.
        """
        if self.prefix_cache is None or seq.block_table or seq.computes_whole_prompt:
            return 0  # (prompt logprobs need every prompt token's logits: computed, not reused)
        bs = self.config.block_size
        limit = (seq.num_tokens - 1 if max_tokens is None else min(max_tokens, seq.num_tokens)) // bs
        self._hash_blocks(seq, limit)
        blocks = self.prefix_cache.match(seq.block_hashes[:limit], 0 if seq.prefix_looked_up else seq.num_tokens)
        seq.prefix_looked_up = True
        seq.block_table = blocks
        seq.num_cached, seq.num_registered = len(blocks) * bs, len(blocks)
        return seq.num_cached

    def _hash_blocks(self, seq: Sequence, limit: int) -> None:
        """Extends ``seq.block_hashes`` over its first ``limit`` full blocks (its salt's chain)."""
        seq.block_hashes = block_hashes(seq.all_ids, self.config.block_size, seq.block_hashes, limit=limit,
                                        cache_salt=seq.cache_salt)

    def register(self, seq: Sequence) -> None:
        """Offers the sequence's newly completed full blocks to the prefix cache."""
        if self.prefix_cache is None:
            return
        n_full = seq.num_cached // self.config.block_size
        if n_full <= seq.num_registered:
            return
        self._hash_blocks(seq, n_full)
        self.prefix_cache.insert(seq.block_hashes[seq.num_registered : n_full], seq.block_table[seq.num_registered : n_full])
        seq.num_registered = n_full

    # ---- in-batch prefix sharing -------------------------------------------------------------
    def _mostly_computed_by_others(self, seq: Sequence, computing: set[bytes]) -> bool:
        """True when at least half of what the new sequence has left to compute is full prompt
        blocks another sequence computes in this very step: it waits one step and reuses them
        (many requests with one system prompt arriving together compute it once)."""
        if self.prefix_cache is None or not computing:
            return False
        bs = self.config.block_size
        limit = (seq.num_tokens - 1) // bs  # as in reuse_prefix: the last token is always computed
        self._hash_blocks(seq, limit)
        # blocks it holds (fetched for it) or would reuse from the cache now
        first = seq.num_cached // bs if seq.block_table else self.prefix_cache.num_cached(seq.block_hashes[:limit])
        shared = 0
        for h in seq.block_hashes[first:limit]:
            if h not in computing:
                break
            shared += 1
        return shared > 0 and 2 * shared * bs >= seq.num_tokens - first * bs

    def _note_computing(self, seq: Sequence, num_tokens: int, computing: set[bytes]) -> None:
        """Adds the hashes of the full blocks a prompt chunk of ``num_tokens`` completes."""
        if self.prefix_cache is None:
            return
        bs = self.config.block_size
        first, end = seq.num_cached // bs, min(seq.num_cached + num_tokens, seq.num_prompt) // bs
        if end > first:
            self._hash_blocks(seq, end)
            computing.update(seq.block_hashes[first:end])

    def blocks_promised(self) -> int:
        """Blocks the prompts already queued or part-way through still need: what a caller taking
        blocks outside the scheduler (a prefill worker reading a prefix from the kvstore) leaves
        them, so it does not jump the queue."""
        return sum(self._blocks_needed(s, s.num_prompt - s.num_cached)
                   for s in (*self.running, *self.waiting) if s.num_cached < s.num_prompt)

    def _release_waiting(self) -> bool:
        """Gives back the blocks waiting sequences hold, their full ones into the prefix cache first;
        True if there were any. A sequence can wait holding blocks: its cached prefix, taken when
        it was new, or what a prefill worker read from the kvstore before handing it over. It must
        not hold them while a sequence they could serve waits for blocks: each would wait for the
        other. Its prefix is found in the cache again when it runs, unless recycled meanwhile."""
        held = [s for s in self.waiting if s.block_table]
        for seq in held:
            self.register(seq)
            self.free(seq)
        return bool(held)

    def _preempt(self, seq: Sequence) -> None:
        logger.info("preempting %s (out of KV blocks)", seq.request_id)
        self.num_preemptions += 1
        self.running.remove(seq)
        self.free(seq)
        seq.status = SeqStatus.WAITING
        self._enqueue(seq)

    def _victim(self) -> Sequence:
        """The running sequence to preempt: of the lowest priority (the highest value), the last
        admitted (with every priority equal: the newest)."""
        return max(reversed(self.running), key=lambda s: s.priority)

    def add_running(self, seq: Sequence) -> None:
        """Join a sequence whose KV is already in its blocks (a decode handoff)."""
        self._arrive(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def trim(self, seq: Sequence) -> None:
        """Free trailing blocks beyond what the cached tokens occupy (after rejected drafts)."""
        keep = -(-seq.num_cached // self.config.block_size)
        if len(seq.block_table) > keep:
            self.allocator.free(seq.block_table[keep:])
            del seq.block_table[keep:]

    def detach(self, seq: Sequence) -> None:
        """Stop scheduling a sequence but keep its blocks: the caller now owns them."""
        if seq in self.running:
            self.running.remove(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence wherever it is and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.free(seq)

    def schedule(self, extra_tokens: dict[str, int] | None = None) -> list[ScheduledSeq]:
        """``extra_tokens``: request id -> draft tokens to verify on top of its next token."""
        budget = self.config.max_num_batched_tokens
        out: list[ScheduledSeq] = []
        # 1. decoding sequences: oldest first; preempt the newest of the lowest priority when blocks run out
        for seq in list(self.running):
            if seq not in self.running or seq.is_prefilling:
                continue
            n = 1 + (extra_tokens or {}).get(seq.request_id, 0)
            while not self._grow(seq, n):
                if self._release_waiting():
                    continue  # blocks a waiting sequence held: cheaper than a preemption
                victim = self._victim()
                self._preempt(victim)
                if victim is seq:
                    break
                # a victim of a lower priority may have been scheduled already: its blocks are gone
                for i, done in enumerate(out):
                    if done.seq is victim:
                        budget += out.pop(i).num_tokens
                        break
            if seq.status is SeqStatus.RUNNING:
                out.append(ScheduledSeq.of(seq, n, n - 1))
                budget -= n
        # 2. sequences part-way through their prompt, then new ones, by chunks
        prefilling = [s for s in self.running if s.is_prefilling]
        candidates = prefilling + list(self.waiting)
        computing: set[bytes] = set()  # hashes of the full blocks this step's prompt chunks complete
        adapters = {s.lora.digest for s in self.running if s.lora is not None}
        for seq in candidates:
            if budget <= 0:
                break
            is_new = seq.status is SeqStatus.WAITING
            if is_new and len(self.running) >= self.config.max_num_seqs:
                break
            if is_new and self._mostly_computed_by_others(seq, computing):
                continue  # next step its prefix is cached: compute it once, not once per request
            if is_new and seq.lora is not None and seq.lora.digest not in adapters \
                    and len(adapters) >= self.config.max_loras:
                continue  # its adapter waits for one of the running ones to finish
            if is_new and seq.num_cached == 0:
                self.reuse_prefix(seq)
            n = min(seq.num_tokens - seq.num_cached, budget)
            if not self._grow(seq, n):
                self._release_waiting()  # (this one too, when it is new)
                break  # wait for blocks; never preempt running work for a newcomer
            self._note_computing(seq, n, computing)
            if is_new:
                if seq.lora is not None:
                    adapters.add(seq.lora.digest)
                self.waiting.remove(seq)
                seq.status = SeqStatus.RUNNING
                # prompt tokens not computed: reused from the cache, or read from the kvstore
                seq.num_cached_prompt = max(seq.num_cached_prompt, min(seq.num_cached, seq.num_prompt))
                self.running.append(seq)
            out.append(ScheduledSeq.of(seq, n))
            budget -= n
        return out

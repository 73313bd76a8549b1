"""The engine step: schedule -> forward -> postprocess, over one model and one paged KV pool.

Both workers build on this: the prefill worker runs prompts to their first token, the decode
worker runs the continuous batch. ``LLMEngine.generate`` is the offline entry point.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from engine import fp32_products
from engine.attention import get_backend
from engine.batch import SeqInput, plan_batch
from engine.block_allocator import BlockAllocator
from engine.config import ModelConfig
from engine.detokenizer import Detokenizer, FinishReason
from engine.engine_config import EngineConfig
from engine.errors import InvalidRequestError
from engine.invariance import forward_row_invariant
from engine.kv_layout import KVLayout, dtype_from_name
from engine.kv_pool import KVPool
from engine.layers import ROW_INVARIANT_DTYPES, products_row_invariant, step_tile
from engine.lookahead.budget import key_reads
from engine.lora.registry import LoraRegistry
from engine.lookahead.numbering import DigitVocab
from engine.lookahead.corpus import load_corpus
from engine.lookahead.trie_state import load_trie
from engine.lookahead.speculator import Speculator, compaction_slots, node_positions
from engine.lookahead.tree import DraftTree, node_paths
from engine.model import Model
from engine.model_loader import load_model, model_fingerprint
from engine.pooling import Pooler, PoolingParams
from engine.prefix_cache import PrefixCache, cache_namespace, check_salt
from engine.request import LoraRef, TokenOut
from engine.sampling import SamplingBatch, greedy_pick, sample, top_k_lowest_first
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from engine.sequence import Sequence as Seq
from engine.sequence import SeqStatus
from engine.step_calibration import calibrate
from engine.structured import Grammars, all_allowed
from engine.token_rules import TokenRules
from engine.tokenizer import load_tokenizer, validate_prompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: str
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finish_reason: FinishReason | None


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one step gave a sequence, taken on the engine thread: a reader on another thread
    (AsyncEngine's callers) must read these, not ``seq``, which the next step goes on changing."""
    seq: Seq
    new_tokens: list[int]
    delta_text: str
    finished: bool
    logprobs: list[tuple[float, list[int], list[float]]] = field(default_factory=list)  # new_tokens' (if asked)
    draft_tokens: int = 0  # the sequence's lookahead totals after this step
    accepted_tokens: int = 0

    def token_outs(self) -> list[TokenOut]:
        """``new_tokens`` with their logprobs and top alternatives where the request asked for them."""
        if not self.logprobs:
            return [TokenOut(t) for t in self.new_tokens]
        return [TokenOut(t, lp, tuple(ids), tuple(lps)) for t, (lp, ids, lps) in zip(self.new_tokens, self.logprobs)]


@dataclass(slots=True)
class TokenCounts:
    """Tokens the engine has computed, since it started (the workers' stats log reads them)."""

    prompt_tokens: int = 0  # prompt chunks computed (prefix-cache hits are not computed; recomputes are)
    generation_tokens: int = 0  # tokens sampled into outputs (drafts accepted among them)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.counts = TokenCounts()
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        model_config = ModelConfig.from_dir(config.model_dir)
        backend = get_backend(config.attention_backend, config.device, model_config.head_dim,
                              model_config.sliding_window)
        dtype = None if config.dtype == "auto" else dtype_from_name(config.dtype)
        self.model: Model = load_model(config.model_dir, backend, dtype=dtype, device=config.device)
        self.weights_dir = config.model_dir  # where the served weights came from (engine.weight_update)
        mc = self.model.config
        # fp32 on a CPU: each product's layout by its row count, timed on the model's own weights
        # (engine.fp32_products; {} elsewhere)
        self.fp32_layouts = fp32_products.tune(fp32_products.model_kinds(self.model.weights))
        self.tokenizer = load_tokenizer(config.model_dir)
        self.loras = LoraRegistry(mc, self.model.dtype, config.device, config.max_lora_rank, config.max_cpu_loras)
        self.max_model_len = min(config.max_model_len or mc.max_position, mc.max_position)
        self.layout = KVLayout(
            model_id=model_fingerprint(config.model_dir),
            dtype=str(self.model.dtype).removeprefix("torch."),
            block_size=config.block_size,
            num_layers=mc.num_layers,
            num_kv_heads=mc.num_kv_heads,
            head_dim=mc.head_dim,
        )
        num_blocks = config.num_kv_blocks or KVPool.blocks_for_bytes(self.layout, int(config.kv_cache_gb * 2**30))
        self.kv = KVPool(self.layout, num_blocks, config.device)
        self.allocator = BlockAllocator(num_blocks)
        # calibration's long context: the model's (not the pool's; a pool too small for it prices no key reads)
        self.calibration_context = min(1024, self.max_model_len - 32)
        if num_blocks * config.block_size < self.max_model_len:
            # a sequence the whole pool cannot hold would wait for blocks forever: contexts are
            # capped so that any one sequence fits alone (preemption makes room for it)
            logger.warning("the KV pool holds %d tokens, fewer than the context length %d: contexts are capped at "
                           "%d tokens (a larger --kv-cache-gb serves longer ones)", num_blocks * config.block_size,
                           self.max_model_len, num_blocks * config.block_size)
            self.max_model_len = num_blocks * config.block_size
        self.prefix_cache = PrefixCache(self.allocator, config.block_size) if config.prefix_caching else None
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.block_size, config.max_loras),
            self.allocator,
            self.prefix_cache,
        )
        self.eos_ids = tuple(mc.eos_token_ids) or ((self.tokenizer.eos_token_id,) if self.tokenizer.eos_token_id is not None else ())
        self.grammars = Grammars(self.tokenizer, self.model.config.vocab_size)  # structured output
        self.seqs: dict[str, Seq] = {}
        self.speculator: Speculator | None = None
        if config.lookahead and not self._steps_exact():
            logger.warning("lookahead off: in %s on %s a row's logits change with what else shares the step "
                           "(the products' or attention's kernels), so a verified draft could differ from plain "
                           "decoding (serve float32 for lookahead; on a CPU, bfloat16 with Grove's kernels)",
                           self.model.dtype, config.device)
        elif config.lookahead:
            self.speculator = Speculator(config.lookahead_max_depth, config.lookahead_width,
                                         config.lookahead_max_step_tokens,
                                         step_align=step_tile(self.model.weights.layers[0].qkv),
                                         digits=DigitVocab.from_tokenizer(self.tokenizer),
                                         corpus=load_corpus(config.lookahead_corpus,
                                                            lambda t: self.tokenizer.encode(t, add_special_tokens=False)))
            drafter = self.speculator.drafter  # its global trie as a restart left it (--lookahead-state)
            drafter.global_trie = (load_trie(config.lookahead_state, self.layout.model_id, drafter.config.global_max_nodes)
                                   if config.lookahead_state else None) or drafter.global_trie
            calibrate(self)
        logger.info("engine ready: %d KV blocks of %d tokens (%.1f MiB)", num_blocks, config.block_size, self.kv.nbytes / 2**20)

    def _steps_exact(self) -> bool:
        """Lookahead is exact in 16 bits only where a row's bits do not depend on what shares its
        step, which depends on the device's math kernels: the products checked on one layer's
        weights and the LM head over many widths, then the whole forward (engine.invariance). fp32
        is taken as it is (its rounding differences are far below greedy's margins)."""
        if self.model.dtype not in ROW_INVARIANT_DTYPES:
            return True
        w = self.model.weights
        layer = w.layers[0]
        return products_row_invariant([layer.qkv, layer.o, layer.gate_up, layer.down, w.lm_head]) \
            and forward_row_invariant(self.model, self.kv, self.allocator, self.config.block_size, self.config.device)

    def sync(self) -> None:
        """Waits for the device's queued work (CUDA runs asynchronously); a no-op on CPU."""
        if self.kv.data.is_cuda:
            torch.cuda.synchronize(self.kv.data.device)

    # ---- requests -------------------------------------------------------------------------
    def make_sequence(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                      priority: int = 0, cache_salt: str = "", resume_ids: Sequence[int] = (),
                      lora: LoraRef | None = None, pooling: PoolingParams | None = None) -> Seq:
        """Validates and builds a sequence (not yet scheduled). ``priority``: vLLM's, lower first;
        ``cache_salt``: vLLM's, the request shares cached KV and drafts only with its salt (and its
        LoRA adapter: ``lora``, loaded on first use);
        ``resume_ids``: the output a resumed request already has (its text already streamed): the
        sequence goes on from there as if it had generated them (stop strings, grammar, lengths);
        ``pooling``: an embedding request (engine.pooling), which runs its prompt and samples nothing."""
        validate_prompt(prompt_ids, self.model.config.vocab_size, self.max_model_len)
        params.check_vocab(self.model.config.vocab_size)
        check_salt(cache_salt)
        if request_id in self.seqs:
            raise ValueError(f"duplicate request id {request_id!r}")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        adapter = self.loras.get(lora) if lora is not None else None
        seq = Seq(
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            seed=seed,
            detok=Detokenizer(self.tokenizer, params, self.eos_ids),
            max_len=self.max_model_len,
            grammar=self.grammars.grammar(params.structured) if params.structured is not None else None,
            rules=TokenRules.build(params, self.tokenizer, self.model.config.vocab_size),
            priority=priority,
            cache_salt=cache_namespace(cache_salt, lora.digest if lora is not None else ""),
            lora=adapter,
            lora_name=lora.name if lora is not None else "",
            pooler=Pooler(pooling, len(prompt_ids)) if pooling is not None else None,
        )
        if params.min_tokens and params.allowed_token_ids and set(params.allowed_token_ids) <= set(seq.detok.stop_ids):
            raise InvalidRequestError("allowed_token_ids", "every allowed token ends the output, which min_tokens "
                                                           "forbids at first: nothing could be sampled")
        if resume_ids:
            validate_prompt([*prompt_ids, *resume_ids], self.model.config.vocab_size, self.max_model_len)
            for token in resume_ids:
                if seq.append_token(token) is not None:
                    raise InvalidRequestError("resume_token_ids", "the output had ended already")
            seq.detok.take_delta(False)  # the client has this text
        return seq

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
                    priority: int = 0, cache_salt: str = "") -> Seq:
        seq = self.make_sequence(request_id, prompt_ids, params, priority, cache_salt)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def add_sequence(self, seq: Seq, running: bool = False) -> None:
        """Adds a prepared sequence; ``running`` when its KV is already in its block table."""
        self.seqs[seq.request_id] = seq
        if running:
            self.scheduler.add_running(seq)
        else:
            self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        """Ends a request and frees its blocks; False if it is unknown or already done."""
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        seq.status, seq.finish_reason = SeqStatus.FINISHED, "abort"
        if self.speculator is not None:
            self.speculator.forget(request_id)
        return True

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """schedule -> forward -> postprocess, with lookahead drafts verified in the same forward."""
        drafts = self._propose()
        scheduled = self.scheduler.schedule({rid: len(t) for rid, t in drafts.items()})
        if not scheduled:
            return []
        # a draft survives only if its sequence was scheduled to decode with it (not preempted, nor
        # preempted and scheduled again in the same step to compute its tokens once more)
        drafts = {s.seq.request_id: drafts[s.seq.request_id] for s in scheduled if s.num_draft_tokens}
        self.counts.prompt_tokens += sum(s.num_tokens for s in scheduled if s.seq.is_prefilling)
        t0 = time.perf_counter()
        logits = self.forward(scheduled, drafts)
        # (a chunk scoring its prompt computes every row's logits: not a step's usual price)
        if self.speculator is not None and not any(_prompt_rows(s) for s in scheduled):
            self.sync()  # the cost model prices the forward, not its launches
            seconds = time.perf_counter() - t0
            cost = self.speculator.cost
            tokens = sum(s.num_tokens for s in scheduled)
            reads = sum(key_reads(s.seq.num_cached, s.num_tokens) for s in scheduled)
            context = sum(s.seq.num_cached for s in scheduled)
            if not any(s.seq.is_prefilling for s in scheduled):  # decoding steps: drafts' true price
                extra_group = 0 < len(drafts) < len(scheduled)  # as the planner priced it
                cost.observe_step(bool(drafts), seconds,
                                  cost.cost(tokens, reads, extra_group=extra_group, context_keys=context))
            cost.observe(tokens, seconds, key_reads=reads, context_keys=context)
        outputs = self.postprocess(scheduled, self._take_prompt_logprobs(scheduled, drafts, logits), drafts)
        self.counts.generation_tokens += sum(len(o.new_tokens) for o in outputs)
        return outputs

    def _propose(self) -> dict[str, DraftTree]:
        if self.speculator is None:
            return {}
        running = self.scheduler.running
        decoding = [s for s in running if Speculator.eligible(s)]
        # the step without drafts: one token per decoding sequence, a chunk per prefilling one
        new = [min(s.num_tokens - s.num_cached, self.config.max_num_batched_tokens) if s.is_prefilling else 1
               for s in running]
        base_reads = sum(key_reads(s.num_cached, q) for q, s in zip(new, running))
        return self.speculator.propose(decoding, sum(new), base_reads, sum(s.num_cached for s in running))

    def forward(self, scheduled: list[ScheduledSeq], drafts: dict[str, DraftTree] | None = None) -> torch.Tensor:
        """Runs the model over the scheduled tokens; logits [N, vocab] for the sampling rows."""
        inputs = []
        for s in scheduled:
            seq = s.seq
            tree = (drafts or {}).get(seq.request_id)
            if tree is not None:
                tokens, parents = tree.step_input(seq.all_ids[-1])
                inputs.append(SeqInput(tokens, seq.num_cached, seq.block_table, parents=parents, logits="all",
                                       lora=seq.lora))
            else:
                mode = "all" if _prompt_rows(s) else "last" if s.samples else "none"
                inputs.append(SeqInput(seq.all_ids[seq.num_cached : seq.num_cached + s.num_tokens], seq.num_cached,
                                       seq.block_table, logits=mode, lora=seq.lora))
        batch = plan_batch(inputs, self.config.block_size, self.config.device, self.model.config.sliding_window)
        if not any(s.seq.pooler is not None for s in scheduled):
            return self.model.run(batch, self.kv)
        logits, hidden = self.model.run_pooled(batch, self.kv)
        for s, start in zip(scheduled, batch.attn.query_start.tolist()):
            if s.seq.pooler is not None:  # (never drafted: a pooling sequence holds its KV)
                s.seq.pooler.add(hidden[start:start + s.num_tokens], s.seq.num_cached)
        return logits

    def _take_prompt_logprobs(self, scheduled: list[ScheduledSeq], drafts: dict[str, DraftTree],
                              logits: torch.Tensor) -> torch.Tensor:
        """Records prompt logprobs from the rows of chunks that asked for all of theirs
        (``_prompt_rows``) and returns the sampling rows alone, as the step would have them."""
        if not any(_prompt_rows(s) for s in scheduled if s.seq.request_id not in drafts):
            return logits
        keep: list[int] = []
        row = 0
        for s in scheduled:
            tree = drafts.get(s.seq.request_id)
            n = len(tree) + 1 if tree is not None else s.num_tokens if _prompt_rows(s) else int(s.samples)
            if tree is None and _prompt_rows(s):
                _record_prompt_logprobs(s.seq, logits[row : row + n])
                keep += [row + n - 1] if s.samples else []
            else:
                keep += range(row, row + n)
            row += n
        return logits[keep]

    def _sample(self, scheduled: list[ScheduledSeq], logits: torch.Tensor,
                drafts: dict[str, DraftTree]) -> tuple[list[int], list[tuple[float, list[int], list[float]] | None]]:
        """One row per sampling position (a tree has one per node), in logits order."""
        if all(s.seq.params.greedy and s.seq.params.logprobs is None and not s.seq.params.shapes_logits
               for s in scheduled if s.samples):
            # greedy rows need only their argmax (sample()'s rule): no per-row tensors to build
            return greedy_pick(logits).tolist(), [None] * logits.shape[0]
        params, seeds, positions, prompts, outputs, stops, paths = [], [], [], [], [], [], []
        masked_rows: list[int] = []  # rows under a grammar or allowed tokens, in order; their masks in ``masks``
        masks: list[torch.Tensor] = []
        bans: list[list[int]] = []  # each row's bad words' last tokens it may not take
        for s in scheduled:
            if not s.samples:
                continue
            seq = s.seq
            tree = drafts.get(seq.request_id)
            pos = node_positions(tree, seq.num_cached) if tree is not None else [seq.num_tokens]
            step = tree.step_input(seq.all_ids[-1]) if tree is not None else None
            rules = seq.rules
            if seq.grammar is not None or (rules is not None and rules.allowed is not None):
                if seq.grammar is not None:
                    mask = all_allowed(len(pos), self.model.config.vocab_size)
                    if step is not None:
                        seq.grammar.fill_tree(mask, 0, *step)
                    else:
                        seq.grammar.fill(mask, 0)
                else:  # allowed tokens (never beside a grammar: SamplingParams refuses both)
                    mask = rules.allowed.expand(len(pos), -1)  # type: ignore[union-attr]
                masked_rows += range(len(params), len(params) + len(pos))
                masks.append(mask)
            # a tree's row i reads the output, then the drafts on the path to node i: its bans and
            # penalties are what plain decoding would give there (the paths built once for both)
            banning = rules is not None and bool(rules.bad_words)
            tree_paths = node_paths(*step) if step is not None and (banning or seq.params.has_penalties) else None
            bans += rules.row_bans(seq.output_ids, tree_paths) if rules is not None and banning else [[]] * len(pos)
            params += [seq.params] * len(pos)
            seeds += [seq.seed] * len(pos)
            positions += pos
            prompts += [seq.prompt_ids] * len(pos)
            outputs += [seq.output_ids] * len(pos)  # one object for the sequence's rows (read once)
            paths += tree_paths if tree_paths is not None and seq.params.has_penalties else [()] * len(pos)
            stops += [seq.detok.stop_ids] * len(pos)
        allowed = (torch.tensor(masked_rows, dtype=torch.long), torch.cat(masks)) if masks else None
        out = sample(logits, SamplingBatch.build(params, seeds, positions, prompts, outputs, stops, allowed,
                                                 bans if any(bans) else None, paths, logits.device))
        lps: list[tuple[float, list[int], list[float]] | None] = [None] * len(params)
        if out.logprobs is not None:
            for i, p in enumerate(params):
                if p.logprobs is not None:
                    n = p.logprobs
                    top_ids = out.top_ids[i, :n].tolist() if out.top_ids is not None else []
                    top_lp = out.top_logprobs[i, :n].tolist() if out.top_logprobs is not None else []
                    lps[i] = (float(out.logprobs[i]), top_ids, top_lp)
        return out.tokens.tolist(), lps

    def postprocess(self, scheduled: list[ScheduledSeq], logits: torch.Tensor,
                    drafts: dict[str, DraftTree] | None = None) -> list[StepOutput]:
        drafts = drafts or {}
        sampled, lps = self._sample(scheduled, logits, drafts) if logits.shape[0] else ([], [])
        results: list[StepOutput] = []
        row = 0
        for s in scheduled:
            seq = s.seq
            if not s.samples:
                seq.num_cached += s.num_tokens
                self.scheduler.register(seq)
                if seq.pooler is not None and seq.num_cached >= seq.num_tokens:
                    results.append(self._pooled(seq))
                continue
            tree = drafts.get(seq.request_id)
            if tree is None:
                rows, path, new = [row], [0], [sampled[row]]
                seq.num_cached += s.num_tokens
            else:
                n = len(tree) + 1
                v = self.speculator.verify(seq, tree, sampled[row : row + n])  # type: ignore[union-attr]
                rows, path, new = [row + i for i in v.path], v.path, v.tokens
                moves = compaction_slots(seq.block_table, self.config.block_size, seq.num_cached, path,
                                         self.kv.data.device)
                if moves is not None:
                    self.model.backend.copy_slots(self.kv.data, *moves)
                seq.num_cached += len(path)
            row += len(tree) + 1 if tree is not None else 1
            appended: list[int] = []
            step_lps: list[tuple[float, list[int], list[float]]] = []
            reason = None
            for r, token in zip(rows, new):
                if seq.params.logprobs is not None and lps[r] is not None:
                    seq.logprobs.append(lps[r])  # type: ignore[arg-type]
                    step_lps.append(lps[r])  # type: ignore[arg-type]
                appended.append(token)
                reason = seq.append_token(token)
                if reason is not None:
                    break
            if tree is not None:  # drafts past a stop or the length limit never reach the output
                seq.num_accepted_tokens += min(len(path) - 1, len(appended))
            # after the append: accepted drafts' KV was computed this step but their tokens join
            # all_ids only now, and a finishing sequence gets no later step to register them
            self.scheduler.register(seq)
            if seq.hold_kv:  # prefill-only: stop here (finished or not), hand the blocks to the caller
                seq.status, seq.finish_reason = SeqStatus.FINISHED, reason
                self.scheduler.detach(seq)
                self.seqs.pop(seq.request_id, None)
            elif reason is not None:
                self.finish(seq, reason)
            elif tree is not None:
                self.scheduler.trim(seq)  # blocks that only held rejected drafts go back
            results.append(StepOutput(seq, appended, seq.detok.take_delta(seq.finished), seq.finished, step_lps,
                                      seq.num_draft_tokens, seq.num_accepted_tokens))
        return results

    def _pooled(self, seq: Seq) -> StepOutput:
        """A pooling sequence whose prompt is computed: its vector, and it ends (holding its blocks
        for the caller where it holds its KV, as a prefill does)."""
        seq.embedding = seq.pooler.result()  # type: ignore[union-attr]
        if seq.hold_kv:
            seq.status, seq.finish_reason = SeqStatus.FINISHED, "stop"
            self.scheduler.detach(seq)
            self.seqs.pop(seq.request_id, None)
        else:
            self.finish(seq, "stop")
        return StepOutput(seq, [], "", True)

    def finish(self, seq: Seq, reason: FinishReason) -> None:
        seq.status, seq.finish_reason = SeqStatus.FINISHED, reason
        self.scheduler.remove(seq)
        self.seqs.pop(seq.request_id, None)
        if self.speculator is not None:
            self.speculator.finish(seq)

    # ---- offline --------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]) -> list[RequestOutput]:
        """Runs prompts to completion together (continuous batching) and returns their outputs."""
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        seqs = [self.add_request(f"gen-{i}-{secrets.token_hex(4)}", p, sp) for i, (p, sp) in enumerate(zip(prompts, plist))]
        while self.has_work:
            self.step()
        return [
            RequestOutput(s.request_id, s.prompt_ids, s.output_ids, s.detok.text, s.finish_reason) for s in seqs
        ]


def _prompt_rows(s: ScheduledSeq) -> bool:
    """The chunk computes prompt tokens whose next token's logprob the request asked for: every row's
    logits are needed (the chunk's rows sit at positions num_cached, num_cached + 1, ...)."""
    seq = s.seq
    return seq.params.prompt_logprobs is not None and seq.num_cached < seq.num_prompt - 1


def _record_prompt_logprobs(seq: Seq, logits: torch.Tensor) -> None:
    """logits [n, V]: rows at positions num_cached ... num_cached + n - 1. The row at position p
    gives prompt token p + 1's entry; entries already recorded (a recompute after preemption) are
    not added again."""
    first = len(seq.prompt_logprobs) - seq.num_cached  # the first row whose entry is new
    assert first >= 0, "prompt logprobs need every prompt position computed (no prefix reuse)"
    last = min(logits.shape[0], seq.num_prompt - 1 - seq.num_cached)  # rows past it predict outputs
    if first >= last:
        return
    logp = logits[first:last].float().log_softmax(dim=-1)
    start = seq.num_cached + first
    targets = torch.tensor(seq.prompt_ids[start + 1 : seq.num_cached + last + 1], device=logp.device)
    chosen = logp.gather(-1, targets[:, None])  # [m, 1]
    ranks = ((logp > chosen).sum(dim=-1) + 1).tolist()  # 1 + the tokens more likely than the prompt's
    k = seq.params.prompt_logprobs or 0
    top_values, top_ids = top_k_lowest_first(logp, k) if k else (None, None)
    for i, lp in enumerate(chosen[:, 0].tolist()):
        seq.prompt_logprobs.append((lp, ranks[i], top_ids[i].tolist() if top_ids is not None else [],
                                    top_values[i].tolist() if top_values is not None else []))

"""The engine step: schedule -> forward -> postprocess, over one model and one paged KV pool.

Both workers build on this: the prefill worker runs prompts to their first token, the decode
worker runs the continuous batch. ``LLMEngine.generate`` is the offline entry point.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Sequence

import torch

from engine.attention import get_backend
from engine.batch import SeqInput, plan_batch
from engine.block_allocator import BlockAllocator
from engine.detokenizer import Detokenizer, FinishReason
from engine.engine_config import EngineConfig
from engine.kv_layout import KVLayout, dtype_from_name
from engine.kv_pool import KVPool
from engine.model import Model
from engine.model_loader import load_model, model_fingerprint
from engine.sampling import SamplingBatch, sample
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from engine.sequence import Sequence as Seq
from engine.sequence import SeqStatus
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
    seq: Seq
    new_tokens: list[int]
    delta_text: str
    finished: bool


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        backend = get_backend(config.attention_backend, config.device)
        dtype = None if config.dtype == "auto" else dtype_from_name(config.dtype)
        self.model: Model = load_model(config.model_dir, backend, dtype=dtype, device=config.device)
        mc = self.model.config
        self.tokenizer = load_tokenizer(config.model_dir)
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
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.block_size), self.allocator
        )
        self.eos_ids = tuple(mc.eos_token_ids) or ((self.tokenizer.eos_token_id,) if self.tokenizer.eos_token_id is not None else ())
        self.seqs: dict[str, Seq] = {}
        logger.info("engine ready: %d KV blocks of %d tokens (%.1f MiB)", num_blocks, config.block_size, self.kv.nbytes / 2**20)

    # ---- requests -------------------------------------------------------------------------
    def make_sequence(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> Seq:
        """Validates and builds a sequence (not yet scheduled)."""
        validate_prompt(prompt_ids, self.model.config.vocab_size, self.max_model_len)
        if request_id in self.seqs:
            raise ValueError(f"duplicate request id {request_id!r}")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        return Seq(
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            seed=seed,
            detok=Detokenizer(self.tokenizer, params, self.eos_ids),
            max_len=self.max_model_len,
        )

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> Seq:
        seq = self.make_sequence(request_id, prompt_ids, params)
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
        return True

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        logits = self.forward(scheduled)
        return self.postprocess(scheduled, logits)

    def forward(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        """Runs the model over the scheduled tokens; logits [N, vocab] for the sampling rows."""
        inputs = [
            SeqInput(
                token_ids=s.seq.all_ids[s.seq.num_cached : s.seq.num_cached + s.num_tokens],
                num_cached=s.seq.num_cached,
                block_table=s.seq.block_table,
                logits="last" if s.samples else "none",
            )
            for s in scheduled
        ]
        batch = plan_batch(inputs, self.config.block_size, self.config.device)
        return self.model.run(batch, self.kv)

    def postprocess(self, scheduled: list[ScheduledSeq], logits: torch.Tensor) -> list[StepOutput]:
        sampling = [s for s in scheduled if s.samples]
        tokens: list[int] = []
        if sampling:
            seqs = [s.seq for s in sampling]
            batch = SamplingBatch.build(
                [q.params for q in seqs],
                [q.seed for q in seqs],
                [q.num_tokens for q in seqs],  # position of the token being sampled
                [q.prompt_ids for q in seqs],
                [q.output_ids for q in seqs],
            )
            out = sample(logits, batch)
            tokens = out.tokens.tolist()
            if out.logprobs is not None:
                for i, q in enumerate(seqs):
                    if q.params.logprobs is not None:
                        n = q.params.logprobs
                        top_ids = out.top_ids[i, :n].tolist() if out.top_ids is not None else []
                        top_lp = out.top_logprobs[i, :n].tolist() if out.top_logprobs is not None else []
                        q.logprobs.append((float(out.logprobs[i]), top_ids, top_lp))
        results: list[StepOutput] = []
        token_iter = iter(tokens)
        for s in scheduled:
            seq = s.seq
            seq.num_cached += s.num_tokens
            if not s.samples:
                continue
            token = next(token_iter)
            reason = seq.append_token(token)
            if reason is not None:
                self.finish(seq, reason)
            elif seq.hold_kv:  # prefill-only: stop here, hand the blocks to the caller
                seq.status = SeqStatus.FINISHED
                self.scheduler.detach(seq)
                self.seqs.pop(seq.request_id, None)
            results.append(StepOutput(seq, [token], seq.detok.take_delta(seq.finished), seq.finished))
        return results

    def finish(self, seq: Seq, reason: FinishReason) -> None:
        seq.status, seq.finish_reason = SeqStatus.FINISHED, reason
        self.scheduler.remove(seq)
        self.seqs.pop(seq.request_id, None)

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

"""One request's state inside an engine: tokens, KV blocks, progress and finish reason."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from engine.detokenizer import Detokenizer, FinishReason
from engine.lora.adapter import LoraAdapter
from engine.pooling import Pooler
from engine.sampling_params import SamplingParams
from engine.structured import Grammar
from engine.token_rules import TokenRules


class SeqStatus(Enum):
    WAITING = "waiting"  # no KV blocks yet (new or preempted)
    RUNNING = "running"  # holds blocks; prefilling while num_cached < num_prompt
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    detok: Detokenizer
    max_len: int  # context limit: prompt + output never exceed it
    all_ids: list[int] = field(default_factory=list)  # prompt + output
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0  # leading tokens of all_ids whose K/V are in the cache
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: FinishReason | None = None
    # filled by the sampler when logprobs are asked for: per output token (logprob, top ids, top logprobs)
    logprobs: list[tuple[float, list[int], list[float]]] = field(default_factory=list)
    # prompt_logprobs: entry j is prompt token j + 1's (logprob, rank, top ids, top logprobs) given the
    # tokens before it; rank 1 is the most likely token
    prompt_logprobs: list[tuple[float, int, list[int], list[float]]] = field(default_factory=list)
    # lookahead bookkeeping: tokens drafted, and drafted tokens that reached the output (OpenAI's
    # accepted_prediction_tokens: a stop or the length limit inside an accepted path drops the
    # rest, which the server-wide counters still count as the verifier accepted them, as vLLM's do)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    hold_kv: bool = False  # prefill-only: stop after the first token (finished or not), keep the blocks
    # prefix caching: chained hashes of full blocks of all_ids (engine.prefix_cache), how many of
    # block_table's leading blocks are registered in the local cache, and prompt tokens reused
    block_hashes: list[bytes] = field(default_factory=list)
    num_registered: int = 0
    num_cached_prompt: int = 0
    prefix_looked_up: bool = False  # counted once in the cache's hit rate, even if preempted
    cache_salt: str = ""  # vLLM's: salted requests share cached blocks and drafts only with their salt
    grammar: Grammar | None = None  # structured output: where the output stands in its grammar
    rules: TokenRules | None = None  # allowed tokens and bad words (engine.token_rules)
    priority: int = 0  # vLLM's: lower goes first (waiting order) and is preempted last; ties by arrival
    arrival: int = -1  # the scheduler's count when it first took the sequence (set by Scheduler.add)
    lora: LoraAdapter | None = None  # the LoRA adapter it runs with (None: the base model)
    lora_name: str = ""  # the adapter's name as the request gave it (the metrics name adapters by it)
    # an embedding request: pools its prompt's final hidden states, samples nothing; its vector
    # (``embedding``) once the prompt is computed
    pooler: Pooler | None = None
    embedding: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.all_ids:
            self.all_ids = list(self.prompt_ids)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.all_ids[self.num_prompt :]

    @property
    def is_prefilling(self) -> bool:
        return self.num_cached < self.num_tokens - 1 or self.num_tokens == self.num_prompt

    @property
    def computes_whole_prompt(self) -> bool:
        """Whether every prompt row must be computed here (no cached prefix): prompt logprobs, and
        pooling that reads every row."""
        return self.params.prompt_logprobs is not None or (self.pooler is not None and self.pooler.params.reads_every_row)

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def append_token(self, token: int) -> FinishReason | None:
        self.all_ids.append(token)
        if self.grammar is not None and not self.grammar.accept(token):
            # every token was sampled under the grammar's mask: a refusal is Grove's bug, reported
            return "error"
        reason = self.detok.append(token)
        if reason is None and self.grammar is not None and self.grammar.terminated:
            reason = "stop"  # the grammar took its stop token (kept even with ignore_eos)
        if reason is None and self.num_tokens >= self.max_len:
            reason = "length"
        return reason

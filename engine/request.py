"""Plain values that travel between the pipeline's stages (converted to protobuf in protocol/)."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class LoraRef:
    """A LoRA adapter a request runs with (vLLM's LoRARequest): what each worker loads it by."""

    name: str  # as the client names it (the request's "model")
    path: str  # the PEFT adapter's directory, readable by every worker
    digest: str  # of its files (engine.lora.adapter.adapter_digest): its KV is keyed by content


@dataclass(frozen=True, slots=True)
class WorkRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    seed: int  # resolved once by the gateway: every stage samples the same stream
    priority: int = 0  # vLLM's: lower is scheduled first and preempted last (engine.scheduler)
    cache_salt: str = ""  # vLLM's: cached prefixes and drafts are shared only among requests of one salt
    # a request resumed after its decode worker was lost: the output tokens it already has
    resume_ids: tuple[int, ...] = ()
    lora: LoraRef | None = None  # the adapter it runs with (None: the base model)


@dataclass(frozen=True, slots=True)
class TokenOut:
    token_id: int
    logprob: float = 0.0
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()
    rank: int = 0  # the token's place in the vocabulary by probability (1: the likeliest); 0: not computed


@dataclass(frozen=True, slots=True)
class KVHandle:
    """Where a request's prompt KV is held (on a prefill worker) for a decode worker to pull."""

    worker_address: str
    lease_id: str
    block_ids: tuple[int, ...]
    num_tokens: int
    compat_key: str
    block_bytes: int
    # NIXL addressing of the holder's pool; nixl_agent == "" when NIXL is off
    nixl_agent: str = ""
    pool_name: str = ""
    base_addr: int = 0
    num_blocks: int = 0
    mem_type: str = "DRAM"
    device_id: int = 0


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(slots=True)
class GenerationChunk:
    """A piece of a request's output as it streams back to the client."""

    text: str = ""
    tokens: list[TokenOut] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    prompt_logprobs: list[TokenOut] | None = None  # the first chunk's, when asked: prompt tokens 1..
    stop_reason: str | int | None = None  # the last chunk's, when "stop": vLLM's (engine.detokenizer)

"""Protobuf <-> Grove values for the public API (grove.v1) and the workers (grove.internal.v1).

Nothing else in the pipeline touches *_pb2 types except the servicers that call these functions.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from engine.generation_defaults import with_defaults
from engine.pooling import PoolingParams
from engine.request import GenerationChunk, KVHandle, LoraRef, TokenOut, Usage, WorkRequest
from engine.sampling_params import SamplingParams
from engine.structured import StructuredSpec
from grove.internal.v1 import worker_pb2 as wpb
from grove.v1 import api_pb2 as apb

_OPTIONAL_SAMPLING = (
    "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "seed", "logprobs", "lookahead", "skip_special_tokens", "prompt_logprobs",
)


def sampling_from_pb(pb: apb.SamplingParams, defaults: Mapping[str, object] | None = None) -> SamplingParams:
    """Unset fields take ``defaults`` (the served model's, engine.generation_defaults), else
    SamplingParams'; validation errors name the field."""
    kwargs: dict[str, object] = {name: getattr(pb, name) for name in _OPTIONAL_SAMPLING if pb.HasField(name)}
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        if name in kwargs:
            kwargs[name] = round(float(kwargs[name]), 6)  # float32 on the wire
    kwargs["stop"] = tuple(pb.stop)
    kwargs["stop_token_ids"] = tuple(pb.stop_token_ids)
    kwargs["ignore_eos"] = pb.ignore_eos
    kwargs["min_tokens"] = pb.min_tokens
    kwargs["include_stop_str_in_output"] = pb.include_stop_str_in_output
    kwargs["allowed_token_ids"] = tuple(pb.allowed_token_ids)
    kwargs["bad_words"] = tuple(pb.bad_words)
    kwargs["prediction"] = tuple(pb.prediction)
    if pb.HasField("structured"):
        kwargs["structured"] = StructuredSpec(pb.structured.kind, pb.structured.spec)  # type: ignore[arg-type]
    kwargs["logit_bias"] = tuple(sorted((t, round(float(b), 6)) for t, b in pb.logit_bias.items()))
    return SamplingParams(**with_defaults(kwargs, defaults or {}))  # type: ignore[arg-type]


def sampling_to_pb(p: SamplingParams) -> apb.SamplingParams:
    pb = apb.SamplingParams(
        max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
        repetition_penalty=p.repetition_penalty, presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty, stop=list(p.stop), stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos, min_tokens=p.min_tokens, logit_bias=dict(p.logit_bias),
        include_stop_str_in_output=p.include_stop_str_in_output, skip_special_tokens=p.skip_special_tokens,
        allowed_token_ids=list(p.allowed_token_ids), bad_words=list(p.bad_words), prediction=list(p.prediction),
    )
    if p.seed is not None:
        pb.seed = p.seed
    if p.logprobs is not None:
        pb.logprobs = p.logprobs
    if p.lookahead is not None:
        pb.lookahead = p.lookahead
    if p.structured is not None:
        pb.structured.kind, pb.structured.spec = p.structured.kind, p.structured.spec
    if p.prompt_logprobs is not None:
        pb.prompt_logprobs = p.prompt_logprobs
    return pb


def work_to_pb(w: WorkRequest) -> wpb.WorkRequest:
    lora = wpb.LoraAdapter(name=w.lora.name, path=w.lora.path, digest=w.lora.digest) if w.lora is not None else None
    return wpb.WorkRequest(request_id=w.request_id, prompt_token_ids=list(w.prompt_ids),
                           sampling=sampling_to_pb(w.params), seed=w.seed, priority=w.priority,
                           cache_salt=w.cache_salt, resume_token_ids=list(w.resume_ids), lora=lora)


def work_from_pb(pb: wpb.WorkRequest) -> WorkRequest:
    lora = LoraRef(pb.lora.name, pb.lora.path, pb.lora.digest) if pb.HasField("lora") else None
    return WorkRequest(pb.request_id, tuple(pb.prompt_token_ids), sampling_from_pb(pb.sampling), pb.seed, pb.priority,
                       pb.cache_salt, tuple(pb.resume_token_ids), lora)


def pooling_to_pb(p: PoolingParams) -> wpb.Pooling:
    return wpb.Pooling(type=p.pooling, normalize=p.normalize)


def pooling_from_pb(pb: wpb.Pooling) -> PoolingParams:
    return PoolingParams(pb.type, pb.normalize)


def token_to_pb(t: TokenOut) -> wpb.TokenOut:
    return wpb.TokenOut(token_id=t.token_id, logprob=t.logprob, top_token_ids=list(t.top_ids),
                        top_logprobs=list(t.top_logprobs), rank=t.rank)


def token_from_pb(pb: wpb.TokenOut) -> TokenOut:
    return TokenOut(pb.token_id, pb.logprob, tuple(pb.top_token_ids), tuple(pb.top_logprobs), pb.rank)


def kv_handle_to_pb(h: KVHandle) -> wpb.KVHandle:
    return wpb.KVHandle(
        worker_address=h.worker_address, lease_id=h.lease_id, block_ids=list(h.block_ids), num_tokens=h.num_tokens,
        compat_key=h.compat_key, nixl_agent=h.nixl_agent, pool_name=h.pool_name, base_addr=h.base_addr,
        block_bytes=h.block_bytes, num_blocks=h.num_blocks, mem_type=h.mem_type, device_id=h.device_id,
    )


def kv_handle_from_pb(pb: wpb.KVHandle) -> KVHandle:
    return KVHandle(
        worker_address=pb.worker_address, lease_id=pb.lease_id, block_ids=tuple(pb.block_ids),
        num_tokens=pb.num_tokens, compat_key=pb.compat_key, block_bytes=pb.block_bytes, nixl_agent=pb.nixl_agent,
        pool_name=pb.pool_name, base_addr=pb.base_addr, num_blocks=pb.num_blocks, mem_type=pb.mem_type,
        device_id=pb.device_id,
    )


def stop_reason_to_pb(reason: str | int | None, pb: apb.StopReason) -> None:
    """Sets ``pb`` (a message's stop_reason field) to ``reason``; None leaves it unset."""
    if isinstance(reason, str):
        pb.text = reason
    elif reason is not None:
        pb.token_id = reason


def stop_reason_from_pb(pb: apb.StopReason) -> str | int | None:
    which = pb.WhichOneof("reason")
    return None if which is None else getattr(pb, which)


def decode_chunk_to_pb(chunk: GenerationChunk) -> wpb.DecodeChunk:
    pb = wpb.DecodeChunk(tokens=[token_to_pb(t) for t in chunk.tokens], text=chunk.text,
                         finish_reason=chunk.finish_reason or "")
    stop_reason_to_pb(chunk.stop_reason, pb.stop_reason)
    if chunk.usage is not None:
        pb.draft_tokens = chunk.usage.draft_tokens
        pb.accepted_tokens = chunk.usage.accepted_tokens
    return pb


def decode_chunk_from_pb(pb: wpb.DecodeChunk) -> GenerationChunk:
    """A decode worker's chunk; its usage holds only the worker's lookahead totals so far."""
    usage = Usage(draft_tokens=pb.draft_tokens, accepted_tokens=pb.accepted_tokens)
    return GenerationChunk(pb.text, [token_from_pb(t) for t in pb.tokens], pb.finish_reason or None, usage,
                           stop_reason=stop_reason_from_pb(pb.stop_reason))


def usage_to_pb(u: Usage) -> apb.Usage:
    return apb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                     cached_tokens=u.cached_tokens, draft_tokens=u.draft_tokens, accepted_tokens=u.accepted_tokens)


def logprobs_to_pb(tokens: Iterable[TokenOut]) -> list[apb.TokenLogprob]:
    return [apb.TokenLogprob(token_id=t.token_id, logprob=t.logprob, top_token_ids=list(t.top_ids),
                             top_logprobs=list(t.top_logprobs), rank=t.rank) for t in tokens]


def stream_response_to_pb(request_id: str, chunk: GenerationChunk, with_logprobs: bool) -> apb.GenerateStreamResponse:
    pb = apb.GenerateStreamResponse(request_id=request_id, text=chunk.text,
                                    token_ids=[t.token_id for t in chunk.tokens],
                                    finish_reason=chunk.finish_reason or "")
    stop_reason_to_pb(chunk.stop_reason, pb.stop_reason)
    if with_logprobs:
        pb.logprobs.extend(logprobs_to_pb(chunk.tokens))
    if chunk.prompt_logprobs is not None:
        pb.prompt_logprobs.extend(logprobs_to_pb(chunk.prompt_logprobs))
    if chunk.usage is not None:
        pb.usage.CopyFrom(usage_to_pb(chunk.usage))
    return pb


def prompt_from_api_pb(pb: apb.GenerateRequest | apb.EmbedRequest) -> tuple[str, object]:
    """Which input the request carries: ("prompt", str) | ("ids", list) | ("chat", messages)."""
    kind = pb.WhichOneof("input")
    if kind == "prompt":
        return "prompt", pb.prompt
    if kind == "prompt_token_ids":
        return "ids", list(pb.prompt_token_ids.ids)
    if kind == "chat":
        return "chat", [{"role": m.role, "content": m.content} for m in pb.chat.messages]
    return "none", None

"""One request through the pipeline: prefill (retried on another worker while nothing was
streamed), hand the KV to a decode worker, relay its stream. Both APIs (HTTP, gRPC) call this."""
from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import grpc

from engine.config import ModelConfig
from engine.errors import InvalidRequestError
from engine.request import GenerationChunk, TokenOut, Usage, WorkRequest
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template, load_tokenizer, validate_prompt
from gateway.errors import OverloadedError, UnavailableError
from gateway.router import Router, Worker
from grove.internal.v1 import worker_pb2 as pb
from protocol import pipeline as convert

logger = logging.getLogger(__name__)
PREFILL_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    model_dir: str
    served_model_name: str
    max_model_len: int
    max_concurrent: int = 256  # requests in flight before 429


class GatewayCore:
    def __init__(self, config: GatewayConfig, router: Router) -> None:
        self.config = config
        self.router = router
        self.tokenizer = load_tokenizer(config.model_dir)
        self.model_config = ModelConfig.from_dir(config.model_dir)
        self.in_flight = 0

    # ---- input ------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model and model != self.config.served_model_name:
            raise InvalidRequestError("model", f"model {model!r} is not served here (try {self.config.served_model_name!r})")

    def tokenize(self, prompt: str | Sequence[int] | None = None, messages: list[dict[str, Any]] | None = None) -> list[int]:
        if messages is not None:
            ids = apply_chat_template(self.tokenizer, messages)
        elif isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        elif prompt is not None:
            ids = list(prompt)
        else:
            raise InvalidRequestError("prompt", "is required")
        validate_prompt(ids, self.model_config.vocab_size, self.config.max_model_len)
        return ids

    def work(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "") -> WorkRequest:
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        return WorkRequest(request_id or f"req-{uuid.uuid4().hex}", tuple(prompt_ids), params, seed)

    # ---- the pipeline -----------------------------------------------------------------------
    async def _prefill(self, work: WorkRequest) -> tuple[Worker, pb.PrefillResponse]:
        tried: list[Worker] = []
        busy = False
        req = pb.PrefillRequest(request=convert.work_to_pb(work))
        while True:
            w = self.router.choose_prefill(work.prompt_ids, exclude=tried)
            if w is None:
                if busy:
                    raise OverloadedError("every prefill worker is at capacity; retry later")
                raise UnavailableError("no healthy prefill worker" + (" left after failures" if tried else ""))
            tried.append(w)
            w.in_flight += 1
            try:
                return w, await w.prefill.Prefill(req, timeout=PREFILL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequestError(*_split_field(e.details())) from None
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    busy = True
                elif code == grpc.StatusCode.CANCELLED:
                    raise
                else:  # died or stopped answering: nothing streamed yet, so try another worker
                    self.router.mark_failed(w)
                    logger.warning("prefill on %s failed (%s): retrying elsewhere", w.address, code.name)
            finally:
                w.in_flight -= 1

    async def generate(self, work: WorkRequest) -> AsyncIterator[GenerationChunk]:
        """Streams the request's output; the last chunk has finish_reason and usage."""
        if self.in_flight >= self.config.max_concurrent:
            raise OverloadedError(f"{self.in_flight} requests in flight (limit {self.config.max_concurrent})")
        self.in_flight += 1
        try:
            async for chunk in self._generate(work):
                yield chunk
        finally:
            self.in_flight -= 1

    async def _generate(self, work: WorkRequest) -> AsyncIterator[GenerationChunk]:
        pw, pre = await self._prefill(work)
        usage = Usage(prompt_tokens=len(work.prompt_ids), completion_tokens=1, cached_tokens=pre.cached_tokens)
        first = convert.token_from_pb(pre.first_token)
        if pre.finish_reason:
            yield GenerationChunk(pre.text, [first], pre.finish_reason, usage)
            return
        handed = False
        try:
            yield GenerationChunk(pre.text, [first])
            async for chunk in self._decode(work, pre, first):
                handed = True
                usage.completion_tokens += len(chunk.tokens)
                if chunk.finish_reason is not None:
                    if chunk.usage is not None:
                        usage.draft_tokens, usage.accepted_tokens = chunk.usage.draft_tokens, chunk.usage.accepted_tokens
                    chunk.usage = usage
                yield chunk
        finally:
            if not handed:  # the decode worker never took the KV: free it on the prefill worker now
                try:
                    await pw.prefill.ReleaseKV(pb.ReleaseKVRequest(lease_id=pre.kv.lease_id), timeout=2.0)
                except grpc.aio.AioRpcError:
                    pass  # the lease expires anyway

    async def _decode(self, work: WorkRequest, pre: pb.PrefillResponse, first: TokenOut) -> AsyncIterator[GenerationChunk]:
        req = pb.DecodeRequest(request=convert.work_to_pb(work), first_token=pre.first_token, kv=pre.kv,
                               first_text=pre.text)
        tried: list[Worker] = []
        while True:
            w = self.router.choose_decode(exclude=tried)
            if w is None:
                raise UnavailableError("no healthy decode worker") if not tried else OverloadedError(
                    "every decode worker is at capacity; retry later")
            tried.append(w)
            w.in_flight += 1
            call = w.decode.Decode(req)
            got_any = False
            try:
                async for chunk in call:
                    got_any = True
                    yield convert.decode_chunk_from_pb(chunk)
                return
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequestError(*_split_field(e.details())) from None
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not got_any:
                    continue  # another decode worker may have room; the KV is still held
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.router.mark_failed(w)
                raise UnavailableError(f"decode worker {w.address} failed mid-request: {code.name}: {e.details()}") from None
            finally:
                call.cancel()  # no-op when finished; frees the request everywhere when we leave early
                w.in_flight -= 1


def _split_field(details: str | None) -> tuple[str, str]:
    text = details or "invalid request"
    field, _, msg = text.partition(": ")
    return (field, msg) if msg else ("request", text)

"""The public gRPC API (grove.v1.Grove): the same core as the HTTP API."""
from __future__ import annotations

import time
from typing import AsyncIterator

import grpc

from engine.errors import InvalidRequestError
from engine.pooling import PoolingParams
from engine.request import GenerationChunk, WorkRequest
from engine.sampling_params import SamplingParams
from gateway.core import GatewayCore
from gateway.embeddings import embed
from gateway.errors import OverloadedError, UnavailableError, grpc_status
from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from protocol import pipeline as convert


class GroveServicer(pb_grpc.GroveServicer):
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def _prompt(self, request: pb.GenerateRequest | pb.EmbedRequest) -> list[int]:
        kind, value = convert.prompt_from_api_pb(request)
        truncate = request.truncate_prompt_tokens if request.HasField("truncate_prompt_tokens") else None
        if kind == "chat":
            return self.core.tokenize(messages=value, truncate=truncate)  # type: ignore[arg-type]
        if kind in ("prompt", "ids"):
            return self.core.tokenize(prompt=value, truncate=truncate)  # type: ignore[arg-type]
        raise InvalidRequestError("input", "one of prompt, prompt_token_ids or chat is required")

    def _work(self, request: pb.GenerateRequest) -> tuple[str, WorkRequest]:
        """(the request id the client sees, the pipeline's request)."""
        served = self.core.served(request.model)
        params = convert.sampling_from_pb(request.sampling, self.core.config.sampling_defaults)
        ids = self._prompt(request)
        if request.sampling.HasField("max_tokens"):
            self.core.check_room(len(ids), params.max_tokens)
        shown, work_id = self.core.request_ids(request.request_id)
        return shown, self.core.work(ids, params, work_id, request.priority, request.cache_salt, served.lora)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateStreamResponse]:
        arrived = time.perf_counter()
        try:
            shown, work = self._work(request)
            async for chunk in self.core.generate(work, arrived):
                yield convert.stream_response_to_pb(shown, chunk, work.params.logprobs is not None)
        except (InvalidRequestError, OverloadedError, UnavailableError) as e:
            await context.abort(grpc_status(e), str(e))

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        arrived = time.perf_counter()
        try:
            shown, work = self._work(request)
            text, tokens, last, prompt_lps = "", [], GenerationChunk(), None
            async for chunk in self.core.generate(work, arrived):
                text += chunk.text
                tokens.extend(chunk.tokens)
                last = chunk
                prompt_lps = chunk.prompt_logprobs if chunk.prompt_logprobs is not None else prompt_lps
        except (InvalidRequestError, OverloadedError, UnavailableError) as e:
            await context.abort(grpc_status(e), str(e))
        resp = pb.GenerateResponse(request_id=shown, text=text, token_ids=[t.token_id for t in tokens],
                                   finish_reason=last.finish_reason or "")
        convert.stop_reason_to_pb(last.stop_reason, resp.stop_reason)
        if last.usage is not None:
            resp.usage.CopyFrom(convert.usage_to_pb(last.usage))
        if work.params.logprobs is not None:
            resp.logprobs.extend(convert.logprobs_to_pb(tokens))
        if prompt_lps is not None:
            resp.prompt_logprobs.extend(convert.logprobs_to_pb(prompt_lps))
        return resp

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        try:
            served = self.core.served(request.model)
            ids = self._prompt(request)
            shown, work_id = self.core.request_ids(request.request_id)
            work = self.core.work(ids, SamplingParams(max_tokens=1), work_id, request.priority, request.cache_salt,
                                  served.lora)
            pooling = self.core.config.pooling
            if request.HasField("normalize"):
                pooling = PoolingParams(pooling.pooling, request.normalize)
            vector, cached = await embed(self.core, work, pooling)
        except (InvalidRequestError, OverloadedError, UnavailableError) as e:
            await context.abort(grpc_status(e), str(e))
        return pb.EmbedResponse(request_id=shown, embedding=vector,
                                usage=pb.Usage(prompt_tokens=len(ids), cached_tokens=cached))

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        try:
            self.core.served(request.model)
            if request.WhichOneof("input") == "chat":
                ids = self.core.tokenize(messages=[{"role": m.role, "content": m.content} for m in request.chat.messages])
            else:
                ids = self.core.tokenize(prompt=request.prompt)
        except InvalidRequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.TokenizeResponse(token_ids=ids, max_model_len=self.core.max_model_len)

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        base, dtype, length = self.core.config.served_model_name, self.core.model_config.torch_dtype, self.core.max_model_len
        return pb.ListModelsResponse(models=[*(pb.Model(id=name, max_model_len=length, dtype=dtype)
                                               for name in self.core.config.served_names),
                                             *(pb.Model(id=ref.name, max_model_len=length, dtype=dtype, parent=base)
                                               for ref in self.core.loras)])

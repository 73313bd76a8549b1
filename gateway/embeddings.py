"""OpenAI's embeddings API (``/v1/embeddings``; vLLM's generic ``/pooling`` the same), as vLLM
serves it: each input's final hidden states pooled into one vector on a prefill worker
(engine.pooling), by the model's pooling (its sentence-transformers config, else the last token,
normalised) or the gateway's ``--pooler-config``.

An input is text, token ids, a list of either, or (vLLM's) chat ``messages`` through the chat
template; each is one request to a prefill worker, routed by prefix affinity like a prompt, all
of them at once. Vectors come as floats or (``encoding_format: "base64"``) as little-endian fp32.
"""
from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from engine.errors import InvalidRequestError
from engine.pooling import PoolingParams
from engine.request import WorkRequest
from engine.sampling_params import SamplingParams
from gateway import request_log
from gateway.core import PREFILL_TIMEOUT_S, GatewayCore
from gateway.errors import OverloadedError, UnavailableError
from gateway.http_common import error_response, json_object, request_ids, tagged, unless_gone
from gateway.metrics import RequestTrace
from gateway.openai_protocol import (
    cache_salt_from_body, chat_messages, chat_template_options, completion_prompts, priority_from_body,
    special_tokens_from_body, truncation_from_body,
)
from grove.internal.v1 import worker_pb2 as pb
from protocol import pipeline as convert

ENCODINGS = ("float", "base64")


async def embed(core: GatewayCore, work: WorkRequest, pooling: PoolingParams,
                arrived: float | None = None) -> tuple[list[float], int]:
    """One input's vector and the prompt tokens a prefix cache served (a 429 past the gateway's
    requests in flight, as a generation's). In the gateway's request metrics and log as a request
    of its own. ``arrived``: when its HTTP or gRPC request came (``time.perf_counter()``)."""
    await core.admission.enter()
    trace = RequestTrace(core.metrics, arrived)
    if core.config.log_requests:
        request_log.received(work, core.config.max_log_len, pooling)
    error: BaseException | None = None
    try:
        req = pb.EmbedRequest(request=convert.work_to_pb(work), pooling=convert.pooling_to_pb(pooling))
        _, resp = await core.on_prefill_worker(work, lambda w: w.prefill.Embed(req, timeout=PREFILL_TIMEOUT_S), trace)
        trace.pooled(len(work.prompt_ids), resp.cached_tokens)
        return list(resp.embedding), resp.cached_tokens
    except BaseException as e:
        error = e
        raise
    finally:
        core.admission.leave()
        trace.ended(error)
        if core.config.log_requests:
            request_log.finished(work.request_id, trace.outcome(error))


def pooling_of(body: dict[str, Any], server: PoolingParams) -> PoolingParams:
    """The server's pooling, with vLLM's per-request ``normalize``; OpenAI's ``dimensions`` is
    refused (a model trained for shortened vectors, Matryoshka, would be needed)."""
    if body.get("dimensions") is not None:
        raise InvalidRequestError("dimensions", "is not supported by this model (it was not trained for shortened "
                                                "embeddings)")
    normalize = body.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise InvalidRequestError("normalize", "must be a boolean")
    return server if normalize is None else PoolingParams(server.pooling, normalize)


def encoded(vector: list[float], encoding: str) -> list[float] | str:
    return vector if encoding == "float" else base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


async def embed_all(core: GatewayCore, works: list[WorkRequest], pooling: PoolingParams,
                    arrived: float | None = None) -> list[tuple[list[float], int]]:
    """Each request's ``embed``, all at once; one failing (or the client leaving) stops the others."""
    tasks = [asyncio.ensure_future(embed(core, w, pooling, arrived)) for w in works]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


# the answer's shape by route: OpenAI's embeddings, vLLM's generic /pooling (the same vectors):
# (id prefix, each item's object, the key of its vector)
_SHAPES = {"/v1/embeddings": ("embd", "embedding", "embedding"), "/pooling": ("pool", "pooling", "data")}


async def _answer(core: GatewayCore, request_id: str, model: str, prompts: list[list[int]], works: list[WorkRequest],
                  pooling: PoolingParams, encoding: str, arrived: float, route: str) -> Response:
    try:
        results = await embed_all(core, works, pooling, arrived)
    except (InvalidRequestError, OverloadedError, UnavailableError) as e:
        return error_response(e)
    tokens = sum(len(ids) for ids in prompts)
    prefix, kind, key = _SHAPES[route]
    return JSONResponse({
        "id": f"{prefix}-{request_id}", "object": "list", "created": int(time.time()), "model": model,
        "data": [{"index": i, "object": kind, key: encoded(vector, encoding)} for i, (vector, _) in enumerate(results)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                  "prompt_tokens_details": {"cached_tokens": sum(cached for _, cached in results)}},
    })


def add_embeddings_routes(app: FastAPI, core: GatewayCore) -> None:
    @app.post("/v1/embeddings")
    @app.post("/pooling")  # vLLM's generic pooling API: the same vectors as "data"
    async def embeddings(request: Request) -> Response:
        arrived = time.perf_counter()
        try:
            body = await json_object(request)
            served = core.served(body.get("model"))
            encoding = body.get("encoding_format") or "float"
            if encoding not in ENCODINGS:
                raise InvalidRequestError("encoding_format", f"must be one of {', '.join(ENCODINGS)}")
            params = pooling_of(body, core.config.pooling)
            truncate = truncation_from_body(body)
            if body.get("messages") is not None:  # vLLM's chat form: one input, through the chat template
                prompts = [core.tokenize(messages=chat_messages(body), template=chat_template_options(body),
                                         truncate=truncate)]
            else:
                special = special_tokens_from_body(body)
                prompts = [core.tokenize(prompt=p, truncate=truncate, add_special_tokens=special)
                           for p in completion_prompts(body, core.config.max_concurrent, "input")]
            request_id, work_id = request_ids(core, body, request)
            priority, salt = priority_from_body(body), cache_salt_from_body(body)
            works = [core.work(ids, SamplingParams(max_tokens=1), work_id if len(prompts) == 1 else f"{work_id}-{i}",
                               priority, salt, served.lora) for i, ids in enumerate(prompts)]
        except InvalidRequestError as e:
            return error_response(e)
        return tagged(await unless_gone(request, _answer(core, request_id, served.name, prompts, works, params, encoding,
                                                      arrived, request.url.path)),
                      request_id)

"""vLLM's score and rerank APIs for an embedding model: the cosine similarity of two texts'
pooled vectors (gateway.embeddings), each text embedded once on a prefill worker.

    /score, /v1/score                 text_1 and text_2: one and one, one against many, or pairs
    /rerank, /v1/rerank, /v2/rerank   a query against documents, best first (Jina's and Cohere's shape)
"""
from __future__ import annotations

import math
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams
from gateway.core import GatewayCore
from gateway.embeddings import embed_all
from gateway.errors import OverloadedError, UnavailableError
from gateway.http_common import error_response, json_object, request_ids, tagged, unless_gone
from gateway.lora import ServedModel
from gateway.openai_protocol import cache_salt_from_body, priority_from_body, truncation_from_body


def _texts(body: dict[str, Any], field: str, limit: int) -> list[str]:
    value = body.get(field)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise InvalidRequestError(field, "must be a non-empty string or a non-empty list of them")
    if len(texts) > limit:
        raise InvalidRequestError(field, f"{len(texts)} texts: at most {limit} in one request")
    return texts


def score_pairs(body: dict[str, Any], limit: int) -> tuple[list[str], list[tuple[int, int]]]:
    """vLLM's pairing of text_1 with text_2: one with one, one with each of many, or the i-th with the
    i-th. The distinct texts, and each pair as indices into them."""
    first, second = _texts(body, "text_1", limit), _texts(body, "text_2", limit)
    if len(first) > 1 and len(first) != len(second):
        raise InvalidRequestError("text_1", f"has {len(first)} texts and text_2 {len(second)}: give one text_1, "
                                            "or as many as text_2")
    texts = list(dict.fromkeys([*first, *second]))
    at = {t: i for i, t in enumerate(texts)}
    pairs = [(at[first[0] if len(first) == 1 else first[i]], at[t]) for i, t in enumerate(second)]
    return texts, pairs


def cosine(a: list[float], b: list[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else 0.0


async def _vectors(core: GatewayCore, body: dict[str, Any], work_id: str, served: ServedModel,
                   texts: list[str]) -> tuple[list[list[float]], int]:
    """Each text's vector and their prompt tokens."""
    truncate = truncation_from_body(body)
    prompts = [core.tokenize(prompt=t, truncate=truncate) for t in texts]
    priority, salt = priority_from_body(body), cache_salt_from_body(body)
    works = [core.work(ids, SamplingParams(max_tokens=1), f"{work_id}-{i}", priority, salt, served.lora)
             for i, ids in enumerate(prompts)]
    results = await embed_all(core, works, core.config.pooling)
    return [vector for vector, _ in results], sum(len(p) for p in prompts)


def add_scoring_routes(app: FastAPI, core: GatewayCore) -> None:
    async def score(request: Request) -> Response:
        try:
            body = await json_object(request)
            served = core.served(body.get("model"))
            texts, pairs = score_pairs(body, core.config.max_concurrent)
            request_id, work_id = request_ids(core, body, request)
        except InvalidRequestError as e:
            return error_response(e)

        async def answer() -> Response:
            try:
                vectors, tokens = await _vectors(core, body, work_id, served, texts)
            except (InvalidRequestError, OverloadedError, UnavailableError) as e:
                return error_response(e)
            return JSONResponse({
                "id": f"score-{request_id}", "object": "list", "created": int(time.time()),
                "model": served.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"index": i, "object": "score", "score": cosine(vectors[a], vectors[b])}
                         for i, (a, b) in enumerate(pairs)]})

        return tagged(await unless_gone(request, answer()), request_id)

    async def rerank(request: Request) -> Response:
        try:
            body = await json_object(request)
            served = core.served(body.get("model"))
            query = _texts(body, "query", 1)[0]
            documents = _texts(body, "documents", core.config.max_concurrent - 1)
            top_n = body.get("top_n") or len(documents)
            if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1:
                raise InvalidRequestError("top_n", "must be a positive integer")
            request_id, work_id = request_ids(core, body, request)
        except InvalidRequestError as e:
            return error_response(e)

        async def answer() -> Response:
            try:
                vectors, tokens = await _vectors(core, body, work_id, served, [query, *documents])
            except (InvalidRequestError, OverloadedError, UnavailableError) as e:
                return error_response(e)
            scores = [cosine(vectors[0], v) for v in vectors[1:]]
            best = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
            return JSONResponse({
                "id": f"rerank-{request_id}", "model": served.name, "usage": {"total_tokens": tokens},
                "results": [{"index": i, "document": {"text": documents[i]}, "relevance_score": scores[i]}
                            for i in best]})

        return tagged(await unless_gone(request, answer()), request_id)

    for path in ("/score", "/v1/score"):
        app.add_api_route(path, score, methods=["POST"])
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.add_api_route(path, rerank, methods=["POST"])

"""OpenAI-compatible HTTP API (FastAPI): /v1/completions, /v1/chat/completions, /v1/models,
/health, and vLLM's /tokenize, /detokenize, /ping and /invocations (SageMaker's); beside them
OpenAI's /v1/responses (gateway.responses_http) and Anthropic's /v1/messages
(gateway.messages_http)."""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import InvalidRequestError
from engine.kv_layout import GROVE_VERSION
from engine.request import GenerationChunk, TokenOut, Usage
from engine.sampling_params import SamplingParams
from gateway import beam_search
from gateway.choices import Choice, merged, plan_choices, total_usage
from gateway.core import GatewayCore
from gateway.dev_routes import add_dev_routes, add_profiler_routes
from gateway.embeddings import add_embeddings_routes
from gateway.errors import OverloadedError, UnavailableError, http_status
from gateway.http_common import (
    ERROR_TYPES, error_response, first_chunk, json_object, reasoning_parser_for, request_ids, tagged, unless_gone, with_tools,
)
from gateway.lora import ServedModel
from gateway.messages_http import add_messages_routes
from gateway.openai_protocol import (
    StreamUsage, asked_max_tokens, cache_salt_from_body, chat_messages, chat_template_options, choices_per_prompt,
    completion_prompts, flag, priority_from_body, prompt_logprobs_from_body, reject_unsupported,
    sampling_from_body, special_tokens_from_body, stream_usage_from_body, truncation_from_body, wants_echo,
)
from gateway.openai_response import Echo, ResponseShaper, error_json
from gateway.prediction import prediction_from_body
from gateway.response_store import DEFAULT_SIZE, ResponseStore
from gateway.responses_http import add_responses_routes
from gateway.rl_routes import add_rl_routes
from gateway.scoring import add_scoring_routes
from gateway.structured_request import name_structured_error

logger = logging.getLogger(__name__)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error", 503: "service_unavailable"}


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` (or Anthropic's ``x-api-key: <key>``) on /v1/ and /invocations. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` would relay every streamed chunk through an extra task and memory stream."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        if scope["type"] == "http" and (path.startswith("/v1/") or path == "/invocations"):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"")
            if not given and b"x-api-key" in headers:  # Anthropic's clients' header (the Messages API)
                given = b"Bearer " + headers[b"x-api-key"]
            if not hmac.compare_digest(given, self.expected):
                response = error_response(InvalidRequestError("authorization", "missing or wrong API key"), 401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the routes see: under a ``root_path`` (``--root-path``), a request may come with the
    prefix (the proxy kept it) or without it (the proxy took it off), as Starlette routes both."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


@dataclasses.dataclass(frozen=True, slots=True)
class Cors:
    """Which web pages' scripts may call the API (vLLM's flags and defaults: any origin)."""
    origins: Sequence[str] = ("*",)
    methods: Sequence[str] = ("*",)
    headers: Sequence[str] = ("*",)
    credentials: bool = False


def build_app(core: GatewayCore, api_key: str = "", cors: Cors | None = Cors(),
              responses_kept: int = DEFAULT_SIZE, root_path: str = "") -> FastAPI:
    """``cors`` None: no CORS headers (a browser then refuses other origins' calls);
    ``responses_kept``: how many Responses API responses are stored (gateway.response_store);
    ``root_path``: the prefix a reverse proxy serves the API under (vLLM's --root-path)."""
    app = FastAPI(title="Grove", docs_url=None, redoc_url=None, root_path=root_path)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    if cors is not None:  # added last, so outermost: a 401's answer carries the headers a browser needs to read it
        app.add_middleware(CORSMiddleware, allow_origins=list(cors.origins), allow_methods=list(cors.methods),
                           allow_headers=list(cors.headers), allow_credentials=cors.credentials)

    @app.get("/health")
    @app.api_route("/ping", methods=["GET", "POST"])  # vLLM's (SageMaker's) name for the same check
    async def health() -> Response:
        ok = any(w.healthy for w in core.router.prefill) and any(w.healthy for w in core.router.decode)
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": GROVE_VERSION}

    @app.get("/load")
    async def load() -> dict[str, int]:
        """vLLM's server load: the requests this gateway has in flight (for a load balancer)."""
        return {"server_load": core.admission.in_flight}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(core.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    started = int(time.time())

    def model_card(served: ServedModel) -> dict[str, Any]:
        """OpenAI's model object, with vLLM's ``root`` (the checkpoint, or the adapter's directory),
        ``parent`` (an adapter's base model) and ``max_model_len``."""
        lora = served.lora
        return {"id": served.name, "object": "model", "created": started, "owned_by": "grove",
                "root": lora.path if lora is not None else core.config.model_dir,
                "parent": core.config.served_model_name if lora is not None else None,
                "max_model_len": core.max_model_len}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """A card per name the model is served under (vLLM's --served-model-name may give several),
        then one per LoRA adapter."""
        served = [ServedModel(name) for name in core.config.served_names] + [ServedModel(r.name, r) for r in core.loras]
        return {"object": "list", "data": [model_card(s) for s in served]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> Response:
        """OpenAI's "retrieve model" (``client.models.retrieve``); a name not served is a 404."""
        try:
            served = core.served(model)  # (an alias's card is its own, where responses name the first)
            return JSONResponse(model_card(served if served.lora is not None else ServedModel(model)))
        except InvalidRequestError as e:
            return error_response(e)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        """vLLM's: serve another adapter (``lora_name``, ``lora_path``), where the gateway allows
        run-time updates (``--allow-runtime-lora-updating`` or VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""
        try:
            body = await json_object(request)
            core.loras.check_updatable()
            name, path = body.get("lora_name"), body.get("lora_path")
            if not isinstance(name, str) or not isinstance(path, str):
                raise InvalidRequestError("lora_name" if not isinstance(name, str) else "lora_path", "must be a string")
            core.loras.add(name, path)
        except InvalidRequestError as e:
            return error_response(e)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        """vLLM's: stop serving an adapter (requests already running finish with it)."""
        try:
            body = await json_object(request)
            core.loras.check_updatable()
            name = body.get("lora_name")
            if not isinstance(name, str):
                raise InvalidRequestError("lora_name", "must be a string")
            core.loras.remove(name)
        except InvalidRequestError as e:
            return error_response(e)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        """vLLM's: the token ids a completion (``prompt``) or chat (``messages``) request would
        have, their count and the context length."""
        try:
            body = await json_object(request)
            core.served(body.get("model"))
            if body.get("messages") is not None:
                ids = core.token_ids(messages=chat_messages(body), template=chat_template_options(body))
            elif isinstance(body.get("prompt"), str):
                ids = core.token_ids(prompt=body["prompt"], add_special_tokens=special_tokens_from_body(body))
            else:
                raise InvalidRequestError("prompt", "must be a string (or give messages)")
            strs = flag(body, "return_token_strs")
        except InvalidRequestError as e:
            return error_response(e)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": core.max_model_len, "tokens": ids}
        if strs:  # the tokenizer's pieces, as vLLM gives them
            out["token_strs"] = core.tokenizer.convert_ids_to_tokens(ids)
        return JSONResponse(out)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        try:
            body = await json_object(request)
            core.served(body.get("model"))
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                raise InvalidRequestError("tokens", "must be a list of token ids")
            text = core.detokenize(tokens)
        except InvalidRequestError as e:
            return error_response(e)
        return JSONResponse({"prompt": text})

    async def handle(request: Request, chat: bool) -> Response:
        arrived = time.perf_counter()
        body: dict[str, Any] = {}
        try:
            body = await json_object(request)
            served = core.served(body.get("model"))
            reject_unsupported(body, chat)
            stream_usage = stream_usage_from_body(body, core.config.force_include_usage)
            return_ids = flag(body, "return_token_ids")
            tokens_as_ids = flag(body, "return_tokens_as_token_ids", core.config.tokens_as_ids)
            truncate = truncation_from_body(body)
            params = sampling_from_body(body, chat, core.config.sampling_defaults)
            predicted = prediction_from_body(body)
            if predicted:
                params = dataclasses.replace(params, prediction=core.prediction(predicted))
            params, tools = with_tools(core, body, params) if chat else (params, None)
            echo: list[Echo] = []
            if chat:
                messages = chat_messages(body)
                prompts = [core.tokenize(messages=messages, template=chat_template_options(body), truncate=truncate)]
                if wants_echo(body):  # vLLM's: the last message, if the assistant's, before each choice's content
                    if tools is not None:
                        raise InvalidRequestError("echo", "cannot be combined with tool calls")
                    echo = [Echo(messages[-1]["content"] if messages[-1]["role"] == "assistant" else "", ())]
            else:
                given = completion_prompts(body, core.config.max_concurrent)
                special = special_tokens_from_body(body)
                prompts = [core.tokenize(prompt=p, truncate=truncate, add_special_tokens=special) for p in given]
                if wants_echo(body):  # the prompt as the model read it (truncated: its text again)
                    echo = [Echo(p if isinstance(p, str) and truncate is None else core.detokenize(ids), ids)
                            for p, ids in zip(given, prompts)]
                    if params.logprobs is not None:  # the prompt tokens' logprobs go first
                        params = dataclasses.replace(params, prompt_logprobs=params.logprobs)
            max_key = asked_max_tokens(body, chat)
            for ids in prompts if max_key is not None else ():
                core.check_room(len(ids), params.max_tokens, max_key)
            asked = prompt_logprobs_from_body(body)  # vLLM's field: beside the choices
            if asked is not None:
                params = dataclasses.replace(params, prompt_logprobs=max(asked, params.prompt_logprobs or 0))
            # every choice is a request in flight: no more than the gateway takes at once
            n = choices_per_prompt(body, core.config.max_concurrent // len(prompts))
            request_id, work_id = request_ids(core, body, request)
            beams = beam_search.beam_width(body, n, params)
            choices = [] if beams is not None else plan_choices(core, prompts, params, n, work_id,
                                                                priority_from_body(body), cache_salt_from_body(body),
                                                                chat=chat, lora=served.lora)
        except InvalidRequestError as e:
            return error_response(name_structured_error(e, body))
        shaper = ResponseShaper(request_id, served.name, chat, core.tokenizer,
                                params.logprobs, return_ids, {c.index: echo[c.prompt] for c in choices} if echo else None,
                                tools, asked, tokens_as_ids,
                                reasoning_parser_for(core, params, any(c.thinks for c in choices)),
                                show_reasoning=body.get("include_reasoning") is None or flag(body, "include_reasoning"))
        if beams is not None:
            where = beam_search.Placement(work_id, arrived, priority_from_body(body), cache_salt_from_body(body),
                                          served.lora)
            return tagged(await unless_gone(request, _beam_response(core, shaper, prompts, params, *beams, where)),
                           request_id)
        gen = merged(core, choices, arrived)
        first = await first_chunk(gen, lambda e: name_structured_error(e, body))
        if isinstance(first, Response):
            return tagged(first, request_id)
        if body.get("stream"):
            return tagged(StreamingResponse(_sse(shaper, choices, first, gen, stream_usage),
                                             media_type="text/event-stream"), request_id)
        return tagged(await unless_gone(request, _whole(shaper, choices, first, gen)), request_id)

    add_responses_routes(app, core, ResponseStore(responses_kept))
    if core.config.dev_mode:
        add_dev_routes(app, core)
        add_rl_routes(app, core)
    if core.config.profiler:
        add_profiler_routes(app, core)
    add_messages_routes(app, core)
    add_embeddings_routes(app, core)
    add_scoring_routes(app, core)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        """SageMaker's one endpoint, as vLLM serves it: a chat (``messages``) or a completion (``prompt``)."""
        try:
            body = await json_object(request)
        except InvalidRequestError as e:
            return error_response(e)
        if "messages" in body or "prompt" in body:
            return await handle(request, chat="messages" in body)
        return error_response(InvalidRequestError("body", "needs messages (a chat) or prompt (a completion)"))

    return app


async def _beam_response(core: GatewayCore, shaper: ResponseShaper, prompts: list[list[int]], params: SamplingParams,
                         width: int, length_penalty: float, where: beam_search.Placement) -> Response:
    """Every prompt's ``width`` best beams (gateway.beam_search), as its choices."""
    try:
        found = await asyncio.gather(*(beam_search.beam_search(core, ids, params, width, length_penalty,
                                                               where._replace(request_id=f"{where.request_id}-p{i}"))
                                       for i, ids in enumerate(prompts)))
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        return error_response(e)
    outputs = [c for beams, _ in found for c in beam_search.as_choices(core, beams, params.skip_special_tokens)]
    usage = Usage(prompt_tokens=sum(u.prompt_tokens for _, u in found),
                  completion_tokens=sum(u.completion_tokens for _, u in found),
                  cached_tokens=sum(u.cached_tokens for _, u in found))
    return JSONResponse(shaper.whole(outputs, usage))


async def _whole(shaper: ResponseShaper, choices: list[Choice], first: tuple[int, GenerationChunk],
                 gen: AsyncIterator[tuple[int, GenerationChunk]]) -> Response:
    texts = [""] * len(choices)
    tokens: list[list[TokenOut]] = [[] for _ in choices]
    finish: list[str | None] = [None] * len(choices)
    prompt_lps: list[list[TokenOut] | None] = [None] * len(choices)
    stops: list[str | int | None] = [None] * len(choices)
    usages: dict[int, Usage] = {}

    def add(i: int, c: GenerationChunk) -> None:
        texts[i] += c.text
        tokens[i].extend(c.tokens)
        if c.prompt_logprobs is not None:
            prompt_lps[i] = c.prompt_logprobs
        if c.finish_reason is not None:
            finish[i], usages[i], stops[i] = c.finish_reason, c.usage or Usage(), c.stop_reason

    add(*first)
    try:
        async for i, c in gen:
            add(i, c)
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        return error_response(e)
    finally:
        await gen.aclose()  # the client gone mid-way: every choice's request is cancelled
    return JSONResponse(shaper.whole(list(zip(texts, tokens, finish, prompt_lps)), total_usage(choices, usages), stops))


async def _sse(shaper: ResponseShaper, choices: list[Choice], first: tuple[int, GenerationChunk],
               gen: AsyncIterator[tuple[int, GenerationChunk]], usage: StreamUsage) -> AsyncIterator[bytes]:
    def event(obj: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    usages: dict[int, Usage] = {}
    produced = [0] * len(choices)  # each choice's tokens so far (continuous usage)
    try:
        i, c = first
        while True:
            chunk = shaper.chunk(i, c)
            produced[i] += len(c.tokens)
            if not shaper.says_nothing(chunk):
                if usage.continuous:
                    chunk["usage"] = shaper.running_usage(len(choices[i].work.prompt_ids), produced[i])
                yield event(chunk)
            if c.finish_reason is not None:
                usages[i] = c.usage or Usage()
            try:
                i, c = await gen.__anext__()
            except StopAsyncIteration:
                break
        if usage.last:
            yield event(shaper.usage_chunk(total_usage(choices, usages)))
        yield b"data: [DONE]\n\n"
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        # headers are gone: the error travels as an SSE event, then the stream ends
        yield event(error_json(e, ERROR_TYPES.get(http_status(e), "server_error")))
    finally:
        await gen.aclose()  # client gone or done: cancels the request in every process

"""OpenAI-compatible HTTP API (FastAPI): /v1/completions, /v1/chat/completions, /v1/responses,
/v1/models, /health, and vLLM's /tokenize, /detokenize, /ping and /invocations (SageMaker's)."""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import InvalidRequestError
from engine.kv_layout import GROVE_VERSION
from engine.request import GenerationChunk, TokenOut, Usage
from engine.sampling_params import SamplingParams
from gateway import beam_search
from gateway.choices import Choice, merged, plan_choices, total_usage
from gateway.core import GatewayCore
from gateway.errors import OverloadedError, UnavailableError, http_status
from gateway.openai_protocol import (
    StreamUsage, asked_max_tokens, cache_salt_from_body, chat_messages, chat_template_options, choices_per_prompt,
    client_request_id, completion_prompts, flag, priority_from_body, prompt_logprobs_from_body, reject_unsupported,
    sampling_from_body, special_tokens_from_body, stream_usage_from_body, truncation_from_body, wants_echo,
)
from gateway.openai_response import Echo, ResponseShaper, error_json
from gateway.prediction import prediction_from_body
from gateway.response_store import DEFAULT_SIZE, ResponseNotFound, ResponseStore, wants_store
from gateway.responses_api import as_chat_body, name_responses_error, truncation
from gateway.responses_output import ResponseObject
from gateway.token_names import TokenNames
from gateway.structured_request import name_structured_error
from gateway.tools import ToolPlan, tool_plan

logger = logging.getLogger(__name__)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error", 503: "service_unavailable"}


def _error(exc: BaseException, status: int | None = None) -> JSONResponse:
    status = status or http_status(exc)
    return JSONResponse(error_json(exc, _ERROR_TYPES.get(status, "server_error")), status_code=status)


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on /v1/ and /invocations. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` would relay every streamed chunk through an extra task and memory stream."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/invocations"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(InvalidRequestError("authorization", "missing or wrong API key"), 401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _request_ids(core: GatewayCore, body: dict[str, Any], request: Request) -> tuple[str, str]:
    """(the id the client sees, the pipeline's id): vLLM's ``request_id`` or the ``X-Request-Id``
    header, else one the gateway makes (GatewayCore.request_ids)."""
    given = client_request_id(body, request.headers.get("x-request-id"))
    return core.request_ids(*given) if given is not None else core.request_ids("")


def _tagged(response: Response, request_id: str) -> Response:
    """The response with its request's id in ``X-Request-Id`` (as vLLM's request-id headers)."""
    response.headers["X-Request-Id"] = request_id
    return response


@dataclasses.dataclass(frozen=True, slots=True)
class Cors:
    """Which web pages' scripts may call the API (vLLM's flags and defaults: any origin)."""
    origins: Sequence[str] = ("*",)
    methods: Sequence[str] = ("*",)
    headers: Sequence[str] = ("*",)
    credentials: bool = False


def build_app(core: GatewayCore, api_key: str = "", cors: Cors | None = Cors(),
              responses_kept: int = DEFAULT_SIZE) -> FastAPI:
    """``cors`` None: no CORS headers (a browser then refuses other origins' calls);
    ``responses_kept``: how many Responses API responses are stored (gateway.response_store)."""
    store = ResponseStore(responses_kept)
    app = FastAPI(title="Grove", docs_url=None, redoc_url=None)
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

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(core.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    started = int(time.time())

    def model_card(name: str) -> dict[str, Any]:
        """OpenAI's model object, with vLLM's ``root`` (the checkpoint) and ``max_model_len``."""
        return {"id": name, "object": "model", "created": started, "owned_by": "grove",
                "root": core.config.model_dir, "max_model_len": core.max_model_len}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """A card per name the model is served under (vLLM's --served-model-name may give several)."""
        return {"object": "list", "data": [model_card(name) for name in core.config.served_names]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> Response:
        """OpenAI's "retrieve model" (``client.models.retrieve``); a name not served is a 404."""
        if model not in core.config.served_names:
            return _error(InvalidRequestError("model", f"model {model!r} is not served here "
                                                       f"(try {core.config.served_model_name!r})"), 404)
        return JSONResponse(model_card(model))

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        """vLLM's: the token ids a completion (``prompt``) or chat (``messages``) request would
        have, their count and the context length."""
        try:
            body = await _json_object(request)
            core.check_model(body.get("model"))
            if body.get("messages") is not None:
                ids = core.token_ids(messages=chat_messages(body), template=chat_template_options(body))
            elif isinstance(body.get("prompt"), str):
                ids = core.token_ids(prompt=body["prompt"], add_special_tokens=special_tokens_from_body(body))
            else:
                raise InvalidRequestError("prompt", "must be a string (or give messages)")
            strs = flag(body, "return_token_strs")
        except InvalidRequestError as e:
            return _error(e)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": core.max_model_len, "tokens": ids}
        if strs:  # the tokenizer's pieces, as vLLM gives them
            out["token_strs"] = core.tokenizer.convert_ids_to_tokens(ids)
        return JSONResponse(out)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        try:
            body = await _json_object(request)
            core.check_model(body.get("model"))
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                raise InvalidRequestError("tokens", "must be a list of token ids")
            text = core.detokenize(tokens)
        except InvalidRequestError as e:
            return _error(e)
        return JSONResponse({"prompt": text})

    async def handle(request: Request, chat: bool) -> Response:
        arrived = time.perf_counter()
        body: dict[str, Any] = {}
        try:
            body = await _json_object(request)
            core.check_model(body.get("model"))
            reject_unsupported(body, chat)
            stream_usage = stream_usage_from_body(body)
            return_ids, tokens_as_ids = flag(body, "return_token_ids"), flag(body, "return_tokens_as_token_ids")
            truncate = truncation_from_body(body)
            params = sampling_from_body(body, chat, core.config.sampling_defaults)
            predicted = prediction_from_body(body)
            if predicted:
                params = dataclasses.replace(params, prediction=core.prediction(predicted))
            params, tools = _with_tools(core, body, params) if chat else (params, None)
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
            request_id, work_id = _request_ids(core, body, request)
            beams = beam_search.beam_width(body, n, params)
            choices = [] if beams is not None else plan_choices(core, prompts, params, n, work_id,
                                                                priority_from_body(body), cache_salt_from_body(body))
        except InvalidRequestError as e:
            return _error(name_structured_error(e, body))
        shaper = ResponseShaper(request_id, core.config.served_model_name, chat, core.tokenizer,
                                params.logprobs, return_ids, {c.index: echo[c.prompt] for c in choices} if echo else None,
                                tools, asked, tokens_as_ids, _reasoning(core, params))
        if beams is not None:
            where = beam_search.Placement(work_id, arrived, priority_from_body(body), cache_salt_from_body(body))
            return _tagged(await _unless_gone(request, _beam_response(core, shaper, prompts, params, *beams, where)),
                           request_id)
        gen = merged(core, choices, arrived)
        first = await _first(gen, lambda e: name_structured_error(e, body))
        if isinstance(first, Response):
            return _tagged(first, request_id)
        if body.get("stream"):
            return _tagged(StreamingResponse(_sse(shaper, choices, first, gen, stream_usage),
                                             media_type="text/event-stream"), request_id)
        return _tagged(await _unless_gone(request, _whole(shaper, choices, first, gen)), request_id)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """OpenAI's Responses API: the chat request it amounts to (gateway.responses_api)."""
        arrived = time.perf_counter()
        chat: dict[str, Any] = {}
        try:
            body = await _json_object(request)
            chat = as_chat_body(body, store.history(body))
            keep = wants_store(body)
            core.check_model(chat.get("model"))
            params = sampling_from_body(chat, chat=True, defaults=core.config.sampling_defaults)
            prompt = core.tokenize(messages=chat_messages(chat), template=chat_template_options(chat),
                                   truncate=truncation(body, truncation_from_body(chat), core.max_model_len))
            params, tools = _with_tools(core, chat, params)
            reasoning = _reasoning(core, params)
            if (tools is not None or reasoning is not None) and params.logprobs is not None:
                raise InvalidRequestError("include", "output logprobs cannot be combined with tool calls or a "
                                                     "reasoning parser here")
            if asked_max_tokens(chat, chat=True) is not None:  # (named max_output_tokens in the error)
                core.check_room(len(prompt), params.max_tokens)
            request_id, work_id = _request_ids(core, chat, request)
            choices = plan_choices(core, [prompt], params, 1, work_id, priority_from_body(chat),
                                   cache_salt_from_body(chat))
        except ResponseNotFound as e:
            return _error(e, 404)
        except InvalidRequestError as e:
            return _error(name_responses_error(name_structured_error(e, chat)))
        # the turns so far, the instructions left out: what a response continuing this one goes on from
        turns = chat["messages"][1:] if body.get("instructions") is not None else chat["messages"]
        done = (lambda o: store.keep(o.json(), turns, o.answer())) if keep else None
        gen = merged(core, choices, arrived)
        first = await _first(gen, lambda e: name_responses_error(name_structured_error(e, chat)))
        if isinstance(first, Response):
            return _tagged(first, request_id)
        names = TokenNames(core.tokenizer) if params.logprobs is not None else None
        obj = ResponseObject(request_id, core.config.served_model_name, body, names, tools, reasoning)
        if body.get("stream"):
            return _tagged(StreamingResponse(_response_events(obj, first, gen, done), media_type="text/event-stream"),
                           request_id)
        return _tagged(await _unless_gone(request, _whole_response(obj, first, gen, done)), request_id)

    @app.get("/v1/responses/{response_id}")
    async def stored_response(response_id: str) -> Response:
        try:
            return JSONResponse(store.get(response_id).response)
        except ResponseNotFound as e:
            return _error(e, 404)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> Response:
        try:
            store.delete(response_id)
        except ResponseNotFound as e:
            return _error(e, 404)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

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
            body = await _json_object(request)
        except InvalidRequestError as e:
            return _error(e)
        if "messages" in body or "prompt" in body:
            return await handle(request, chat="messages" in body)
        return _error(InvalidRequestError("body", "needs messages (a chat) or prompt (a completion)"))

    return app


def _with_tools(core: GatewayCore, chat: dict[str, Any], params: SamplingParams) -> tuple[SamplingParams, ToolPlan | None]:
    """A chat request's tool plan (gateway.tools), and its sampling under the plan's grammar: a
    named or required call is structured output (of its own: not with another grammar)."""
    tools = tool_plan(chat, core.config.tool_parser)
    if tools is not None and tools.structured is not None:
        if params.structured is not None:
            raise InvalidRequestError("tool_choice", "a tool call is structured output already: "
                                                     "drop response_format / guided_*")
        params = dataclasses.replace(params, structured=tools.structured)
    return params, tools


def _reasoning(core: GatewayCore, params: SamplingParams) -> str | None:
    """The server's reasoning parser, for an answer free to think: a grammar (structured output, a
    named or required call) shapes the whole answer, so it is all content."""
    return core.config.reasoning_parser if params.structured is None else None


async def _first(gen: AsyncIterator[tuple[int, GenerationChunk]],
                 rename: Callable[[InvalidRequestError], InvalidRequestError]) -> tuple[int, GenerationChunk] | Response:
    """The first chunk, or the error response for what went wrong before it: a request fails fast
    (a 4xx/5xx status) on what happens before its first token. ``rename``: a worker's field name
    (its grammar's "structured") as the client's request names it."""
    try:
        return await gen.__anext__()
    except InvalidRequestError as e:
        return _error(rename(e))
    except (OverloadedError, UnavailableError) as e:
        return _error(e)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


async def _json_object(request: Request) -> dict[str, Any]:
    try:  # NaN and Infinity are Python's extension, not JSON: refused (they cannot go back out either)
        body = json.loads(await request.body(), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequestError("body", f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    return body


async def _unless_gone(request: Request, whole: Awaitable[Response]) -> Response:
    """``whole``, unless the client leaves first: then it is cancelled, and with it every choice's
    request (as vLLM aborts a request whose client is gone). A stream learns it from Starlette;
    a whole response would otherwise run to its last token for nobody."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(whole), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})  # its clean-up: closing the choices' requests
    if work.cancelled():
        logger.info("client gone before its response: request cancelled")
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return work.result()


async def _beam_response(core: GatewayCore, shaper: ResponseShaper, prompts: list[list[int]], params: SamplingParams,
                         width: int, length_penalty: float, where: beam_search.Placement) -> Response:
    """Every prompt's ``width`` best beams (gateway.beam_search), as its choices."""
    try:
        found = await asyncio.gather(*(beam_search.beam_search(core, ids, params, width, length_penalty,
                                                               where._replace(request_id=f"{where.request_id}-p{i}"))
                                       for i, ids in enumerate(prompts)))
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        return _error(e)
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
    usages: dict[int, Usage] = {}

    def add(i: int, c: GenerationChunk) -> None:
        texts[i] += c.text
        tokens[i].extend(c.tokens)
        if c.prompt_logprobs is not None:
            prompt_lps[i] = c.prompt_logprobs
        if c.finish_reason is not None:
            finish[i], usages[i] = c.finish_reason, c.usage or Usage()

    add(*first)
    try:
        async for i, c in gen:
            add(i, c)
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        return _error(e)
    finally:
        await gen.aclose()  # the client gone mid-way: every choice's request is cancelled
    return JSONResponse(shaper.whole(list(zip(texts, tokens, finish, prompt_lps)), total_usage(choices, usages)))


Done = Callable[[ResponseObject], None] | None  # called with a response that finished (to store it)


async def _whole_response(obj: ResponseObject, first: tuple[int, GenerationChunk],
                          gen: AsyncIterator[tuple[int, GenerationChunk]], done: Done = None) -> Response:
    obj.add(first[1].text, first[1].finish_reason, first[1].usage, first[1].tokens)
    try:
        async for _, c in gen:
            obj.add(c.text, c.finish_reason, c.usage, c.tokens)
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        return _error(e)
    finally:
        await gen.aclose()
    if done is not None:
        done(obj)
    return JSONResponse(obj.json())


async def _response_events(obj: ResponseObject, first: tuple[int, GenerationChunk],
                           gen: AsyncIterator[tuple[int, GenerationChunk]], done: Done = None) -> AsyncIterator[bytes]:
    """Responses events as SSE (``event:`` names each, as OpenAI sends them); an error mid-way is
    an ``error`` event, then the stream ends."""
    def event(payload: dict[str, Any]) -> bytes:
        return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    try:
        for e in obj.opening():
            yield event(e)
        c = first[1]
        while True:
            for e in obj.add(c.text, c.finish_reason, c.usage, c.tokens):
                yield event(e)
            try:
                _, c = await gen.__anext__()
            except StopAsyncIteration:
                break
        if done is not None:
            done(obj)
        for e in obj.closing():
            yield event(e)
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        yield event(obj.error(e))
    finally:
        await gen.aclose()


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
        yield event(error_json(e, _ERROR_TYPES.get(http_status(e), "server_error")))
    finally:
        await gen.aclose()  # client gone or done: cancels the request in every process

"""What the HTTP APIs share (gateway.http_api: OpenAI's completions and chat; gateway.responses_http:
OpenAI's Responses; gateway.messages_http: Anthropic's Messages): errors as responses, request ids,
JSON bodies, tool and reasoning plans, the first chunk before a status is chosen, a client gone
mid-way, and an answer object whole or streamed as events."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from engine.errors import InvalidRequestError
from engine.request import GenerationChunk, TokenOut, Usage
from engine.sampling_params import SamplingParams
from gateway.core import GatewayCore
from gateway.errors import OverloadedError, UnavailableError, http_status
from gateway.openai_protocol import client_request_id
from gateway.openai_response import error_json
from gateway.tools import ToolPlan, tool_plan

logger = logging.getLogger("gateway.http_api")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error", 503: "service_unavailable"}


def error_response(exc: BaseException, status: int | None = None) -> JSONResponse:
    status = status or http_status(exc)
    return JSONResponse(error_json(exc, ERROR_TYPES.get(status, "server_error")), status_code=status)


def request_ids(core: GatewayCore, body: dict[str, Any], request: Request) -> tuple[str, str]:
    """(the id the client sees, the pipeline's id): vLLM's ``request_id`` or the ``X-Request-Id``
    header, else one the gateway makes (GatewayCore.request_ids)."""
    given = client_request_id(body, request.headers.get("x-request-id"))
    return core.request_ids(*given) if given is not None else core.request_ids("")


def tagged(response: Response, request_id: str) -> Response:
    """The response with its request's id in ``X-Request-Id`` (as vLLM's request-id headers)."""
    response.headers["X-Request-Id"] = request_id
    return response


def with_tools(core: GatewayCore, chat: dict[str, Any], params: SamplingParams) -> tuple[SamplingParams, ToolPlan | None]:
    """A chat request's tool plan (gateway.tools), and its sampling under the plan (ToolPlan.sampling)."""
    tools = tool_plan(chat, core.config.tool_parser)
    return (params, None) if tools is None else (tools.sampling(params), tools)


def reasoning_parser_for(core: GatewayCore, params: SamplingParams, thinks: bool = False) -> str | None:
    """The server's reasoning parser, for an answer free to think: where a grammar (structured
    output, a named or required call) shapes the whole answer, it is all content; where the answer
    thinks before its grammar applies (``thinks``: gateway.reasoned), the parser splits it."""
    return core.config.reasoning_parser if params.structured is None or thinks else None


Respond = Callable[[BaseException], Response]  # an error as an API's response (OpenAI's shape: error_response)


async def first_chunk(gen: AsyncIterator[tuple[int, GenerationChunk]],
                      rename: Callable[[InvalidRequestError], InvalidRequestError],
                      respond: Respond = error_response) -> tuple[int, GenerationChunk] | Response:
    """The first chunk, or the error response for what went wrong before it: a request fails fast
    (a 4xx/5xx status) on what happens before its first token. ``rename``: a worker's field name
    (its grammar's "structured") as the client's request names it."""
    try:
        return await gen.__anext__()
    except InvalidRequestError as e:
        return respond(rename(e))
    except (OverloadedError, UnavailableError) as e:
        return respond(e)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


async def json_object(request: Request) -> dict[str, Any]:
    try:  # NaN and Infinity are Python's extension, not JSON: refused (they cannot go back out either)
        body = json.loads(await request.body(), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequestError("body", f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    return body


async def unless_gone(request: Request, whole: Awaitable[Response]) -> Response:
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


class AnswerObject(Protocol):
    """A Responses or Messages answer being built (gateway.responses_output, gateway.messages_output):
    each chunk's events, the events before and after them, the whole object."""

    def add(self, text: str, finish: str | None, usage: Usage | None, tokens: Sequence[TokenOut] = (),
            stop_reason: str | int | None = None) -> list[dict[str, Any]]: ...

    def opening(self) -> list[dict[str, Any]]: ...

    def closing(self) -> list[dict[str, Any]]: ...

    def error(self, exc: BaseException) -> dict[str, Any]: ...

    def json(self) -> dict[str, Any]: ...


Done = Callable[[Any], None] | None  # called with an answer that finished (to store it)


async def whole_object(obj: AnswerObject, first: tuple[int, GenerationChunk],
                       gen: AsyncIterator[tuple[int, GenerationChunk]], done: Done = None,
                       respond: Respond = error_response) -> Response:
    obj.add(first[1].text, first[1].finish_reason, first[1].usage, first[1].tokens, first[1].stop_reason)
    try:
        async for _, c in gen:
            obj.add(c.text, c.finish_reason, c.usage, c.tokens, c.stop_reason)
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        return respond(e)
    finally:
        await gen.aclose()
    if done is not None:
        done(obj)
    return JSONResponse(obj.json())


def event_sse(payload: dict[str, Any]) -> bytes:
    """A Responses or Messages event as SSE, named by its type."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def object_events(obj: AnswerObject, first: tuple[int, GenerationChunk],
                        gen: AsyncIterator[tuple[int, GenerationChunk]], done: Done = None) -> AsyncIterator[bytes]:
    """The answer's events as SSE (``event:`` names each, as OpenAI and Anthropic send them); an
    error mid-way is an ``error`` event, then the stream ends."""
    try:
        for e in obj.opening():
            yield event_sse(e)
        c = first[1]
        while True:
            for e in obj.add(c.text, c.finish_reason, c.usage, c.tokens, c.stop_reason):
                yield event_sse(e)
            try:
                _, c = await gen.__anext__()
            except StopAsyncIteration:
                break
        if done is not None:
            done(obj)
        for e in obj.closing():
            yield event_sse(e)
    except (OverloadedError, UnavailableError, InvalidRequestError) as e:
        yield event_sse(obj.error(e))
    finally:
        await gen.aclose()



"""OpenAI's Responses API over HTTP: ``POST /v1/responses`` (the chat request it amounts to,
gateway.responses_api; its answer, gateway.responses_output), its stored responses' ``GET`` and
``DELETE`` (gateway.response_store) and their input items, and background responses' ``GET``
(streamed again too) and ``POST /v1/responses/{id}/cancel`` (gateway.background)."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.errors import InvalidRequestError
from gateway.background import BackgroundRuns
from gateway.choices import merged, plan_choices
from gateway.core import GatewayCore
from gateway.errors import OverloadedError
from gateway.http_common import (
    error_response, event_sse, first_chunk, json_object, object_events, reasoning_parser_for, request_ids, tagged,
    unless_gone, whole_object, with_tools,
)
from gateway.openai_protocol import (
    asked_max_tokens, cache_salt_from_body, chat_messages, chat_template_options, priority_from_body,
    sampling_from_body, truncation_from_body,
)
from gateway.response_store import ResponseNotFound, ResponseStore, wants_store
from gateway.responses_api import as_chat_body, input_items, name_responses_error, truncation
from gateway.responses_output import ResponseObject
from gateway.structured_request import name_structured_error
from gateway.token_names import TokenNames


# finished background responses whose events are kept to be streamed again (a long answer's events
# take hundreds of KB); a completed one stays retrievable whole from the store after
FINISHED_RUNS_KEPT = 128


def add_responses_routes(app: FastAPI, core: GatewayCore, store: ResponseStore) -> None:
    runs = BackgroundRuns(min(store.size, FINISHED_RUNS_KEPT))

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """OpenAI's Responses API: the chat request it amounts to (gateway.responses_api)."""
        arrived = time.perf_counter()
        chat: dict[str, Any] = {}
        try:
            body = await json_object(request)
            runs.check_finished(body.get("previous_response_id"))
            chat = as_chat_body(body, store.history(body))
            keep = wants_store(body)
            background = _background(body, keep)
            served = core.served(chat.get("model"))
            params = sampling_from_body(chat, chat=True, defaults=core.config.sampling_defaults)
            prompt = core.tokenize(messages=chat_messages(chat), template=chat_template_options(chat),
                                   truncate=truncation(body, truncation_from_body(chat), core.max_model_len))
            params, tools = with_tools(core, chat, params)
            if asked_max_tokens(chat, chat=True) is not None:  # (named max_output_tokens in the error)
                core.check_room(len(prompt), params.max_tokens)
            request_id, work_id = request_ids(core, chat, request)
            choices = plan_choices(core, [prompt], params, 1, work_id, priority_from_body(chat),
                                   cache_salt_from_body(chat), chat=True, lora=served.lora)
            reasoning = reasoning_parser_for(core, params, choices[0].thinks)
            if (tools is not None or reasoning is not None) and params.logprobs is not None:
                raise InvalidRequestError("include", "output logprobs cannot be combined with tool calls or a "
                                                     "reasoning parser here")
        except ResponseNotFound as e:
            return error_response(e, 404)
        except InvalidRequestError as e:
            return error_response(name_responses_error(name_structured_error(e, chat)))
        # the turns so far, the instructions left out: what a response continuing this one goes on from
        turns = chat["messages"][1:] if body.get("instructions") is not None else chat["messages"]
        done = (lambda o: store.keep(o.json(), turns, o.answer(), input_items(body, o.suffix))) if keep else None
        names = TokenNames(core.tokenizer) if params.logprobs is not None else None
        obj = ResponseObject(request_id, served.name, body, names, tools, reasoning)
        rename = lambda e: name_responses_error(name_structured_error(e, chat))  # noqa: E731
        if background:  # answered now, queued; the gateway's own task makes the answer
            assert done is not None  # (a background response is stored: _background)
            try:
                core.admission.check_capacity()
            except OverloadedError as e:
                return tagged(error_response(e), request_id)
            run = runs.start(obj, merged(core, choices, arrived), done, rename)
            if body.get("stream"):
                return tagged(StreamingResponse(_replay(run.follow()), media_type="text/event-stream"), request_id)
            return tagged(JSONResponse(obj.json()), request_id)
        gen = merged(core, choices, arrived)
        first = await first_chunk(gen, rename)
        if isinstance(first, Response):
            return tagged(first, request_id)
        if body.get("stream"):
            return tagged(StreamingResponse(object_events(obj, first, gen, done), media_type="text/event-stream"),
                           request_id)
        return tagged(await unless_gone(request, whole_object(obj, first, gen, done)), request_id)

    @app.get("/v1/responses/{response_id}")
    async def stored_response(response_id: str, request: Request) -> Response:
        """A stored response, or a background one as it goes; ``stream=true`` (a background
        response's): its events after ``starting_after``, then the rest as they come."""
        run = runs.get(response_id)
        try:
            stream, after = _stream_query(request)
            if stream and run is None:
                store.get(response_id)  # (a 404 where there is none)
                raise InvalidRequestError("stream", "only a background response's events can be streamed again, "
                                                    f"while the gateway keeps them (the latest {runs.size} finished)")
            if run is None:
                return JSONResponse(store.get(response_id).response)
        except ResponseNotFound as e:
            return error_response(e, 404)
        except InvalidRequestError as e:
            return error_response(e)
        if stream:
            return StreamingResponse(_replay(run.follow(after)), media_type="text/event-stream")
        return JSONResponse(run.obj.json())

    @app.get("/v1/responses/{response_id}/input_items")
    async def response_input_items(response_id: str, request: Request) -> Response:
        """The response's request's input items, a page at a time (OpenAI's ``limit``, ``order``,
        ``after``), a background response's while it runs too."""
        run = runs.get(response_id)
        try:
            items = input_items(run.obj.body, run.obj.suffix) if run is not None else \
                list(store.get(response_id).input_items)
            return JSONResponse(_page(items, request))
        except ResponseNotFound as e:
            return error_response(e, 404)
        except InvalidRequestError as e:
            return error_response(e)

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str) -> Response:
        """Stops a background response (idempotent: a finished one is returned as it ended)."""
        run = runs.get(response_id)
        if run is None:
            try:
                store.get(response_id)
            except ResponseNotFound as e:
                return error_response(e, 404)
            return error_response(InvalidRequestError("response_id", "cannot cancel a synchronous response: only a "
                                                                     "background one this gateway still keeps"))
        run.cancel()
        await run.wait()
        return JSONResponse(run.obj.json())

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> Response:
        dropped = runs.drop(response_id)  # (a running one is cancelled)
        try:
            store.delete(response_id)
        except ResponseNotFound as e:
            if not dropped:
                return error_response(e, 404)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


def _background(body: dict[str, Any], keep: bool) -> bool:
    background = body.get("background", False)
    if not isinstance(background, bool):
        raise InvalidRequestError("background", "must be a boolean")
    if background and not keep:
        raise InvalidRequestError("background", "a background response is stored: it cannot have store false")
    return background


def _stream_query(request: Request) -> tuple[bool, int]:
    """``GET``'s ``stream`` and ``starting_after`` (-1: from the first event)."""
    q = request.query_params
    stream = q.get("stream", "false").lower()
    if stream not in ("true", "false"):
        raise InvalidRequestError("stream", "must be true or false")
    after = q.get("starting_after")
    if after is not None and not after.lstrip("-").isdigit():
        raise InvalidRequestError("starting_after", "must be an integer (an event's sequence number)")
    return stream == "true", int(after) if after is not None else -1


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """A page of ``items`` as OpenAI lists them: ``order`` desc (the default: the last first) or
    asc, ``limit`` 1-100 (20), ``after`` an item's id (the page starts past it)."""
    q = request.query_params
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order", "must be asc or desc")
    limit = q.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise InvalidRequestError("limit", "must be an integer from 1 to 100")
    ordered = items if order == "asc" else items[::-1]
    after = q.get("after")
    if after is not None:
        ids = [it["id"] for it in ordered]
        if after not in ids:
            raise InvalidRequestError("after", f"no input item {after!r} in this response")
        ordered = ordered[ids.index(after) + 1:]
    data = ordered[:int(limit)]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > len(data)}


async def _replay(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """A background response's events as SSE. The client leaving stops the stream, not the response."""
    async for e in events:
        yield event_sse(e)

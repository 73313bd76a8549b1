"""Anthropic's Messages API over HTTP, as vLLM serves it: ``POST /v1/messages`` (the chat request
it amounts to, gateway.messages_api; its answer, gateway.messages_output), whole or streamed, and
``POST /v1/messages/count_tokens``. Errors take Anthropic's shape."""
from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.errors import InvalidRequestError
from gateway.choices import merged, plan_choices
from gateway.core import GatewayCore
from gateway.errors import http_status
from gateway.http_common import (
    first_chunk, json_object, object_events, reasoning_parser_for, request_ids, tagged, unless_gone, whole_object,
    with_tools,
)
from gateway.lora import ServedModel
from gateway.messages_api import as_chat_body, name_messages_error
from gateway.messages_output import MessageObject, error_json
from gateway.openai_protocol import (
    cache_salt_from_body, chat_messages, chat_template_options, priority_from_body, sampling_from_body,
)
from gateway.structured_request import name_structured_error


def messages_error(exc: BaseException, status: int | None = None) -> JSONResponse:
    status = status or http_status(exc)
    return JSONResponse(error_json(exc, status), status_code=status)


def add_messages_routes(app: FastAPI, core: GatewayCore) -> None:
    def prompt_of(chat: dict[str, Any]) -> tuple[ServedModel, list[int]]:
        """The model the request names (one not served: a 404, for a count as for a message) and
        its prompt."""
        return core.served(chat.get("model")), core.tokenize(messages=chat_messages(chat),
                                                             template=chat_template_options(chat))

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        arrived = time.perf_counter()
        chat: dict[str, Any] = {}
        try:
            body = await json_object(request)
            chat = as_chat_body(body)
            served, prompt = prompt_of(chat)
            params = sampling_from_body(chat, chat=True, defaults=core.config.sampling_defaults)
            params, tools = with_tools(core, chat, params)
            core.check_room(len(prompt), params.max_tokens)
            request_id, work_id = request_ids(core, chat, request)
            choices = plan_choices(core, [prompt], params, 1, work_id, priority_from_body(chat),
                                   cache_salt_from_body(chat), chat=True, lora=served.lora)
        except InvalidRequestError as e:
            return messages_error(name_messages_error(name_structured_error(e, chat)))
        gen = merged(core, choices, arrived)
        first = await first_chunk(gen, lambda e: name_messages_error(name_structured_error(e, chat)), messages_error)
        if isinstance(first, Response):
            return tagged(first, request_id)
        obj = MessageObject(request_id, served.name, len(prompt), tools,
                            reasoning_parser_for(core, params, choices[0].thinks))
        if body.get("stream"):
            return tagged(StreamingResponse(object_events(obj, first, gen), media_type="text/event-stream"), request_id)
        return tagged(await unless_gone(request, whole_object(obj, first, gen, respond=messages_error)), request_id)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        """The prompt's length, tools and system included (no max_tokens needed)."""
        try:
            body = await json_object(request)
            return JSONResponse({"input_tokens": len(prompt_of(as_chat_body({"max_tokens": 1, **body}))[1])})
        except InvalidRequestError as e:
            return messages_error(name_messages_error(e))

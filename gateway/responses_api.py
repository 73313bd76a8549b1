"""OpenAI's Responses API (``POST /v1/responses``), text in and text out, as vLLM serves it.

A Responses request is read as the chat request it amounts to (``as_chat_body``): ``instructions``
become a system message, ``input`` the conversation, ``max_output_tokens`` max_tokens,
``text.format`` the response format; from there it is a chat completion through the same
pipeline. The answer is shaped as a Response object, or streamed as Responses events
(``ResponseEvents``). Responses are stored, and continued by ``previous_response_id``, by
gateway.response_store.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from engine.errors import InvalidRequestError
from engine.request import TokenOut, Usage
from gateway.token_names import TokenNames

# fields of the Responses API that a text-only server cannot honour: a 400 names them
_UNSUPPORTED = {
    "conversation": "conversation objects (continue a response with previous_response_id)",
    "prompt": "prompt templates",
    "tools": "tools in the Responses API (use chat completions)",
}
OUTPUT_LOGPROBS = "message.output_text.logprobs"  # the one ``include`` a text-only server has
# sampling fields a Responses request shares with chat completions (vLLM's extras included)
_PASSED = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
           "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "logit_bias", "lookahead",
           "bad_words", "allowed_token_ids", "skip_special_tokens", "truncate_prompt_tokens",
           "chat_template_kwargs", "model", "priority", "cache_salt", "request_id", "top_logprobs")


def as_chat_body(body: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The chat-completions body a Responses request amounts to (checked: a 400 names the field);
    ``history``: the turns of the response it continues (``previous_response_id``), before its input."""
    for key, what in _UNSUPPORTED.items():
        if body.get(key) not in (None, [], ""):
            raise InvalidRequestError(key, f"{what} is not supported by this server")
    if body.get("background"):
        raise InvalidRequestError("background", "background responses are not supported by this server")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidRequestError("tool_choice", "tools are not supported in the Responses API here")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise InvalidRequestError("metadata", "must be an object of strings")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise InvalidRequestError("stream_options", "only allowed with stream: true")
    chat: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequestError("instructions", "must be a string")
        messages.append({"role": "system", "content": instructions})
    chat["messages"] = messages + list(history) + _input_messages(body.get("input"))
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
        if isinstance(chat["max_tokens"], bool) or not isinstance(chat["max_tokens"], int):
            raise InvalidRequestError("max_output_tokens", "must be an integer")
    fmt = _text_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise InvalidRequestError("truncation", 'must be "auto" or "disabled"')
    if wants_logprobs(body):
        chat["logprobs"] = True
    return chat


def truncation(body: dict[str, Any], kept: int | None, context: int) -> int | None:
    """The prompt tokens kept: ``kept`` (vLLM's ``truncate_prompt_tokens``), else with
    ``truncation: "auto"`` a conversation longer than the context loses its start, leaving room
    for ``max_output_tokens`` (or one token), instead of failing the request."""
    if kept is None and body.get("truncation") == "auto":
        return max(1, context - (body.get("max_output_tokens") or 1))
    return kept


def wants_logprobs(body: dict[str, Any]) -> bool:
    """The output's logprobs: ``include`` names them (``top_logprobs`` alone asks for them too)."""
    include = body.get("include")
    if include is not None and not (isinstance(include, list) and all(i == OUTPUT_LOGPROBS for i in include)):
        raise InvalidRequestError("include", f"only {OUTPUT_LOGPROBS!r} can be included here")
    return bool(include) or body.get("top_logprobs") is not None


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """``input``: a string (one user message) or a list of message items, each {role, content}
    with content a string or text parts (input_text, output_text); "developer" is the system role."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("input", "must be a string or a non-empty list of messages")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise InvalidRequestError(f"input[{i}]", "only message items are supported")
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequestError(f"input[{i}].role", "must be one of user, assistant, system, developer")
        content = item.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
                       and isinstance(p.get("text"), str) for p in content):
                raise InvalidRequestError(f"input[{i}].content", "only input_text and output_text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidRequestError(f"input[{i}].content", "must be a string or a list of text parts")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _text_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (a json_schema's name and schema sit on the
    format itself here, under ``json_schema`` there)."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidRequestError("text", 'format.type must be "text", "json_object" or "json_schema"')
    if fmt["type"] == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}}
    return {"type": fmt["type"]}


def _usage(u: Usage) -> dict[str, Any]:
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


class ResponseObject:
    """One request's Response object as it goes from in progress to done; ``events`` streams it."""

    def __init__(self, request_id: str, model: str, body: dict[str, Any], names: TokenNames | None = None) -> None:
        """``names``: how the output's logprobs name tokens; None when they were not asked for."""
        self.id = "resp_" + request_id.removeprefix("req-")
        self.item_id = "msg_" + request_id.removeprefix("req-")
        self.model = model
        self.body = body
        self.created = time.time()
        self.text = ""
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.completed: float | None = None  # when the last chunk came
        self.names = names
        self.logprobs: list[dict[str, Any]] = []  # per output token (names given)
        self._unsent = 0  # of those, the first not yet in a streamed delta
        self._seq = 0

    @property
    def status(self) -> str:
        if self.finish is None:
            return "in_progress"
        return "incomplete" if self.finish == "length" else "completed"

    def _message(self) -> dict[str, Any]:
        content = [self._part()] if self.finish is not None else []
        return {"type": "message", "id": self.item_id, "status": self.status, "role": "assistant", "content": content}

    def _part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": self.logprobs}

    def json(self) -> dict[str, Any]:
        b = self.body
        fmt = (b.get("text") or {}).get("format") if isinstance(b.get("text"), dict) else None
        return {
            "id": self.id, "object": "response", "created_at": int(self.created), "model": self.model,
            "status": self.status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if self.status == "incomplete" else None,
            "completed_at": int(self.completed) if self.completed is not None else None,
            "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
            "metadata": b.get("metadata"), "output": [self._message()] if self.finish is not None else [],
            "top_logprobs": b.get("top_logprobs"),
            "parallel_tool_calls": True, "temperature": b.get("temperature"), "top_p": b.get("top_p"),
            "tool_choice": b.get("tool_choice") or "auto", "tools": [], "store": b.get("store", True) is not False,
            "previous_response_id": b.get("previous_response_id"),
            "text": {"format": fmt or {"type": "text"}}, "truncation": b.get("truncation") or "disabled",
            "usage": _usage(self.usage) if self.usage is not None else None,
        }

    def add(self, text: str, finish: str | None, usage: Usage | None, tokens: Sequence[TokenOut] = ()) -> None:
        self.text += text
        if self.names is not None:
            self.logprobs += self.names.content(tokens)
        if finish is not None:
            self.finish, self.usage, self.completed = finish, usage or Usage(), time.time()

    # ---- streamed: Responses events, numbered ------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        """What goes out before the first delta: the response created and in progress, its one
        message item and that item's text part, empty."""
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [self._event("response.created", response=self.json()),
                self._event("response.in_progress", response=self.json()),
                self._event("response.output_item.added", output_index=0, item=self._message()),
                self._event("response.content_part.added", **where, part=self._part())]

    def delta(self, text: str) -> dict[str, Any]:
        """The text added since the last delta, with the logprobs of the tokens added since (a
        token's text may come later than the token: held back by a stop string, or part of a
        character)."""
        logprobs, self._unsent = self.logprobs[self._unsent:], len(self.logprobs)
        return self._event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                           delta=text, logprobs=logprobs)

    def closing(self) -> list[dict[str, Any]]:
        """After the last delta (``add`` has the finish): the text, part and item done, then the
        response completed (or incomplete: out of max_output_tokens)."""
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        last = "response.incomplete" if self.status == "incomplete" else "response.completed"
        return [self._event("response.output_text.done", **where, text=self.text, logprobs=self.logprobs),
                self._event("response.content_part.done", **where, part=self._part()),
                self._event("response.output_item.done", output_index=0, item=self._message()),
                self._event(last, response=self.json())]

    def error(self, exc: BaseException) -> dict[str, Any]:
        return self._event("error", code=type(exc).__name__, message=str(exc), param=None)


# chat's names for what a Responses request calls otherwise
_FIELDS = {"max_tokens": "max_output_tokens", "response_format": "text", "messages": "input", "logprobs": "include"}


def name_responses_error(exc: InvalidRequestError) -> InvalidRequestError:
    """An error found in the chat request a Responses request became, under the field the client set."""
    field = _FIELDS.get(exc.field or "")
    return exc if field is None else InvalidRequestError(field, exc.message)

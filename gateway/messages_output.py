"""An Anthropic Messages answer (gateway.messages_api reads the request): the Message object, and
the events that stream it (``message_start``, each content block's ``content_block_start``,
deltas and ``content_block_stop``, then ``message_delta`` with the stop reason and usage, and
``message_stop``).

Its content blocks are the answer's items in order (gateway.answer_items): ``thinking`` for the
model's thinking (with a reasoning parser), ``text``, and a ``tool_use`` block for each call (its
``input`` the arguments' object, streamed as ``input_json_delta``).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from engine.request import TokenOut, Usage
from gateway.answer_items import AnswerItems, Change, Item
from gateway.errors import http_status
from gateway.tools import ToolPlan

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error", 503: "overloaded_error"}


def error_json(exc: BaseException, status: int | None = None) -> dict[str, Any]:
    """Anthropic's error object."""
    kind = ERROR_TYPES.get(status or http_status(exc), "api_error")
    return {"type": "error", "error": {"type": kind, "message": str(exc)}}


def tool_use_id(call_id: str) -> str:
    """A call's id as Anthropic's look (toolu_...)."""
    return "toolu_" + call_id.removeprefix("chatcmpl-tool-")


class MessageObject:
    """One request's Message; ``opening``, ``add`` and ``closing`` give its events."""

    def __init__(self, request_id: str, model: str, prompt_tokens: int, tools: ToolPlan | None = None,
                 reasoning: str | None = None) -> None:
        """``prompt_tokens``: the prompt's length (message_start's usage, before the cache is
        known); ``tools``, ``reasoning``: as gateway.answer_items."""
        self.id = "msg_" + request_id.removeprefix("req-")
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.items = AnswerItems(tools, reasoning)
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.stop_sequence: str | None = None  # the stop sequence that ended the answer

    @property
    def stop_reason(self) -> str | None:
        if self.finish is None:
            return None
        if self.finish == "length":
            return "max_tokens"
        if self.finish == "abort":  # stopped by a pause (gateway.admission): the turn may be sent back to go on
            return "pause_turn"
        if self.items.calls():
            return "tool_use"
        return "stop_sequence" if self.stop_sequence is not None else "end_turn"

    def _usage(self) -> dict[str, Any]:
        """Anthropic's counts: input_tokens are those not read from the cache."""
        u = self.usage or Usage(prompt_tokens=self.prompt_tokens)
        return {"input_tokens": u.prompt_tokens - u.cached_tokens, "output_tokens": u.completion_tokens,
                "cache_read_input_tokens": u.cached_tokens, "cache_creation_input_tokens": None}

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [self._block(it) for it in self.items.items], "stop_reason": self.stop_reason,
                "stop_sequence": self.stop_sequence, "usage": self._usage()}

    def _block(self, it: Item, start: bool = False) -> dict[str, Any]:
        """The item as a content block (``start``: as content_block_start gives it, empty)."""
        if it.kind == "text":
            return {"type": "text", "text": "" if start else it.text}
        if it.kind == "thinking":
            return {"type": "thinking", "thinking": "" if start else it.text, "signature": ""}
        return {"type": "tool_use", "id": tool_use_id(it.call_id), "name": it.name,
                "input": {} if start else _arguments(it.text)}

    def add(self, text: str, finish: str | None, usage: Usage | None, tokens: Sequence[TokenOut] = (),
            stop_reason: str | int | None = None) -> list[dict[str, Any]]:
        """A chunk of the answer; its events (a streamed message sends them). ``stop_reason``: the
        stop sequence (or stop token) that ended it (engine.detokenizer)."""
        if finish is not None:
            self.finish, self.usage = finish, usage or Usage(prompt_tokens=self.prompt_tokens)
            self.stop_sequence = stop_reason if isinstance(stop_reason, str) else None
        return [e for c in self.items.feed(text, final=finish is not None) for e in self._events(c)]

    def _events(self, change: Change) -> list[dict[str, Any]]:
        what, k, delta = change
        it = self.items.items[k]
        if what == "open":
            return [{"type": "content_block_start", "index": k, "content_block": self._block(it, start=True)}]
        if what == "delta":
            field, kind = _DELTAS[it.kind]
            return [{"type": "content_block_delta", "index": k, "delta": {"type": kind, field: delta}}]
        return [{"type": "content_block_stop", "index": k}]

    def opening(self) -> list[dict[str, Any]]:
        start = {**self.json(), "content": [], "stop_reason": None,
                 "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0}}
        return [{"type": "message_start", "message": start}]

    def closing(self) -> list[dict[str, Any]]:
        return [{"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                 "usage": self._usage()},
                {"type": "message_stop"}]

    def error(self, exc: BaseException) -> dict[str, Any]:
        return error_json(exc)


# each item kind's delta: its field and type
_DELTAS = {"text": ("text", "text_delta"), "thinking": ("thinking", "thinking_delta"),
           "call": ("partial_json", "input_json_delta")}


def _arguments(text: str) -> dict[str, Any]:
    """A call's arguments as its input object ({} where they are not one: cut by max_tokens)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}

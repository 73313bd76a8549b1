"""A Responses API answer (gateway.responses_api reads the request): the Response object as it
goes from in progress to done, and the Responses events that stream it.

Without tools or a reasoning parser the output is one message, opened before the first token.
With them (gateway.tools, gateway.reasoning_parsers) it is the items the answer makes, in order: a
``reasoning`` item for the model's thinking, a message for text, a ``function_call`` for each
call, each opened when its first text or call comes and done when the next one opens or the
answer ends.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from engine.request import TokenOut, Usage
from gateway.answer_items import AnswerItems, Change
from gateway.token_names import TokenNames
from gateway.tools import ToolPlan

# finish reasons that leave the answer incomplete: out of tokens, or stopped by a pause (vLLM's
# "abort": gateway.admission)
CUT_SHORT = ("length", "abort")


def _usage(u: Usage) -> dict[str, Any]:
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


class ResponseObject:
    """One request's Response object; ``opening``, ``add`` and ``closing`` give its events."""

    def __init__(self, request_id: str, model: str, body: dict[str, Any], names: TokenNames | None = None,
                 tools: ToolPlan | None = None, reasoning: str | None = None) -> None:
        """``names``: how the output's logprobs name tokens; None when they were not asked for.
        ``tools``: the answer may call functions; ``reasoning``: the reasoning parser that tells
        the model's thinking from its answer (neither with logprobs)."""
        self.suffix = request_id.removeprefix("req-")
        self.id = "resp_" + self.suffix
        self.item_id = "msg_" + self.suffix
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
        self.itemized = tools is not None or reasoning is not None
        self.answer_items = AnswerItems(tools, reasoning)  # itemized: the output items so far
        self._ids: list[str] = []  # each item's id
        self._status: dict[int, str] = {}  # each done item's status
        self.queued = False  # a background response not yet started (gateway.background)
        self.ended: str | None = None  # "failed" or "cancelled": a background response that did not finish
        self.failure: dict[str, str] | None = None  # a failed one's error

    @property
    def status(self) -> str:
        if self.ended is not None:
            return self.ended
        if self.finish is None:
            return "queued" if self.queued else "in_progress"
        return "incomplete" if self.finish in CUT_SHORT else "completed"

    def _message(self) -> dict[str, Any]:
        """The answer's one message: its text so far (a background response retrieved as it goes),
        in progress until the answer ends; incomplete where it ran out of tokens or was stopped."""
        content = [self._part()] if self.finish is not None or self.text else []
        if self.finish is None and self.ended is None:
            status = "in_progress"
        else:
            status = "completed" if self.finish not in (None, *CUT_SHORT) else "incomplete"
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    def _part(self, text: str | None = None) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text if text is None else text, "annotations": [],
                "logprobs": self.logprobs if text is None else []}

    def _output(self) -> list[dict[str, Any]]:
        if not self.itemized:
            return [self._message()] if self.finish is not None or self.text else []
        return [self._item(k) for k in range(len(self.answer_items.items))]

    def json(self) -> dict[str, Any]:
        b = self.body
        fmt = (b.get("text") or {}).get("format") if isinstance(b.get("text"), dict) else None
        return {
            "id": self.id, "object": "response", "created_at": int(self.created), "model": self.model,
            "status": self.status, "error": self.failure, "background": b.get("background") is True,
            "incomplete_details": {"reason": "max_output_tokens" if self.finish == "length" else "abort"}
            if self.status == "incomplete" else None,
            "completed_at": int(self.completed) if self.completed is not None else None,
            "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
            "metadata": b.get("metadata"), "output": self._output(), "top_logprobs": b.get("top_logprobs"),
            "parallel_tool_calls": b.get("parallel_tool_calls") is not False, "temperature": b.get("temperature"),
            "top_p": b.get("top_p"), "tool_choice": b.get("tool_choice") or "auto", "tools": b.get("tools") or [],
            "store": b.get("store", True) is not False, "previous_response_id": b.get("previous_response_id"),
            "text": {"format": fmt or {"type": "text"}}, "truncation": b.get("truncation") or "disabled",
            "usage": _usage(self.usage) if self.usage is not None else None,
        }

    def answer(self) -> dict[str, Any]:
        """The answer as a chat turn (what a response continuing this one goes on from)."""
        if not self.itemized:
            return {"role": "assistant", "content": self.text}
        items = self.answer_items
        calls = [{"id": it.call_id, "type": "function", "function": {"name": it.name, "arguments": it.text}}
                 for it in items.calls()]
        thought = items.joined("thinking")
        return {"role": "assistant", "content": items.joined("text"), **({"tool_calls": calls} if calls else {}),
                **({"reasoning_content": thought} if thought else {})}

    def add(self, text: str, finish: str | None, usage: Usage | None, tokens: Sequence[TokenOut] = (),
            stop_reason: str | int | None = None) -> list[dict[str, Any]]:
        """A chunk of the answer; its events (a streamed response sends them). (A Response has no
        field for ``stop_reason``.)"""
        self.text += text
        if self.names is not None:
            self.logprobs += self.names.content(tokens)
        if finish is not None:
            self.finish, self.usage, self.completed = finish, usage or Usage(), time.time()
        if not self.itemized:
            return [self._delta(text)] if text else []
        return self._item_events(self.answer_items.feed(text, final=finish is not None))

    # ---- streamed: Responses events, numbered ------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        """What goes out before the first delta: the response created and in progress (without
        tools: its one message item and that item's text part, empty)."""
        return self.announced() + self.started()

    def announced(self) -> list[dict[str, Any]]:
        """The response created (and queued, a background response until its first token)."""
        events = [self._event("response.created", response=self.json())]
        return events + [self._event("response.queued", response=self.json())] if self.queued else events

    def started(self) -> list[dict[str, Any]]:
        """The response in progress (without tools: its message item and text part, empty)."""
        self.queued = False
        events = [self._event("response.in_progress", response=self.json())]
        if not self.itemized:
            where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
            events += [self._event("response.output_item.added", output_index=0, item=self._message()),
                       self._event("response.content_part.added", **where, part=self._part())]
        return events

    def _delta(self, text: str) -> dict[str, Any]:
        """The text added since the last delta, with the logprobs of the tokens added since (a
        token's text may come later than the token: held back by a stop string, or part of a
        character)."""
        logprobs, self._unsent = self.logprobs[self._unsent:], len(self.logprobs)
        return self._event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                           delta=text, logprobs=logprobs)

    def closing(self) -> list[dict[str, Any]]:
        """After the last chunk: without tools, its one item's text, part and item done (an
        itemized answer's last chunk closed its last item), then the response completed (or
        incomplete: out of max_output_tokens)."""
        last = "response.incomplete" if self.status == "incomplete" else "response.completed"
        if self.itemized:
            return [self._event(last, response=self.json())]
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [self._event("response.output_text.done", **where, text=self.text, logprobs=self.logprobs),
                self._event("response.content_part.done", **where, part=self._part()),
                self._event("response.output_item.done", output_index=0, item=self._message()),
                self._event(last, response=self.json())]

    def error(self, exc: BaseException) -> dict[str, Any]:
        return self._event("error", code=type(exc).__name__, message=str(exc), param=None)

    def failed(self, exc: BaseException, code: str) -> list[dict[str, Any]]:
        """A background response's end on an error: the error, then the response failed.
        ``code``: the Responses API's name for what went wrong."""
        self.ended, self.failure = "failed", {"code": code, "message": str(exc)}
        return [self.error(exc), self._event("response.failed", response=self.json())]

    def cancelled(self) -> None:
        """A background response cancelled by its client before it finished."""
        self.ended = "cancelled"

    # ---- itemized: items opened and done as the answer makes them (gateway.answer_items) ----
    def _item(self, k: int) -> dict[str, Any]:
        it, item_id = self.answer_items.items[k], self._ids[k]
        status = self._status.get(k, "in_progress")
        if it.kind == "text":
            return {"type": "message", "id": item_id, "status": status, "role": "assistant",
                    "content": [self._part(it.text)] if it.done else []}
        if it.kind == "thinking":
            return {"type": "reasoning", "id": item_id, "status": status, "summary": [],
                    "content": [{"type": "reasoning_text", "text": it.text}] if it.done else []}
        return {"type": "function_call", "id": item_id, "call_id": it.call_id, "name": it.name,
                "arguments": it.text, "status": status}

    def _item_events(self, changes: list[Change]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        last = len(self.answer_items.items) - 1
        for what, k, delta in changes:
            it = self.answer_items.items[k]
            if what == "open":
                self._ids.append(self._new_id(k))
                events.append(self._event("response.output_item.added", output_index=k, item=self._item(k)))
                if it.kind == "text":
                    events.append(self._event("response.content_part.added", item_id=self._ids[k], output_index=k,
                                              content_index=0, part=self._part("")))
                continue
            where = {"item_id": self._ids[k], "output_index": k}
            if what == "delta":
                kind, extra = _DELTAS[it.kind]
                events.append(self._event(kind, **where, **extra, delta=delta))
                continue
            # done: complete, or incomplete where the answer ran out of tokens in it
            self._status[k] = "incomplete" if k == last and self.finish in CUT_SHORT else "completed"
            if it.kind == "text":
                events += [self._event("response.output_text.done", **where, content_index=0, text=it.text, logprobs=[]),
                           self._event("response.content_part.done", **where, content_index=0, part=self._part(it.text))]
            elif it.kind == "thinking":
                events.append(self._event("response.reasoning_text.done", **where, content_index=0, text=it.text))
            else:
                events.append(self._event("response.function_call_arguments.done", **where, arguments=it.text))
            events.append(self._event("response.output_item.done", output_index=k, item=self._item(k)))
        return events

    def _new_id(self, k: int) -> str:
        """Item k's: msg_<id> for the first message (rs_<id> for the first reasoning), then _1,
        _2...; fc_<id>_<n> for the n-th call."""
        items = self.answer_items.items
        it = items[k]
        prefix = {"text": "msg_", "thinking": "rs_", "call": "fc_"}[it.kind]
        n = sum(i.kind == it.kind for i in items[:k])
        return prefix + self.suffix + (f"_{n}" if n or it.kind == "call" else "")


# the delta event of each kind of item, and its fields beside the delta
_DELTAS: dict[str, tuple[str, dict[str, Any]]] = {
    "text": ("response.output_text.delta", {"content_index": 0, "logprobs": []}),
    "thinking": ("response.reasoning_text.delta", {"content_index": 0}),
    "call": ("response.function_call_arguments.delta", {}),
}

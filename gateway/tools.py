"""OpenAI tool calling without a model-specific parser, as vLLM does it by structured output.

``tool_choice`` naming a function constrains the answer to that function's parameters schema; the
answer becomes the call's arguments. ``"required"`` constrains it to a JSON list of
``{"name", "parameters"}`` objects, one schema per tool, which becomes one call each. ``"auto"``
leaves the answer free and reads calls out of it with a parser of the model's own tool-call format
(gateway.tool_parsers), as vLLM's ``--enable-auto-tool-choice --tool-call-parser NAME``: without
one it gets a 400, as in vLLM. A request with tools and no ``tool_choice`` is ``"auto"`` where the
server has a parser (vLLM's default), else ``"none"``. ``"none"`` answers in text; the tools still
reach the chat template either way.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from engine.errors import InvalidRequestError
from engine.sampling_params import SamplingParams
from engine.structured import StructuredSpec
from gateway.tool_parsers import PARSERS, SPECIAL_TOKENS
from gateway.tool_pieces import Call, CallArgs, JsonStrings, Piece as Parsed

_NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    mode: Literal["named", "required", "auto"]
    name: str | None  # the named function; None for "required" and "auto"
    structured: StructuredSpec | None  # what the answer must follow; None for "auto" (free text)
    parser: str | None = None  # "auto"'s: the model's format (gateway.tool_parsers.PARSERS)
    single: bool = False  # "auto" with parallel_tool_calls false: the first call only
    schemas: Mapping[str, Any] = field(default_factory=dict)  # "auto": each tool's parameters, by name

    def answer(self, text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
        """A whole answer as a message's content and tool calls (None where it has none). A named
        or "required" answer that is not complete JSON (cut by max_tokens) stays text."""
        if self.mode == "auto":
            content, entries = split(ToolStream(self).feed(text, final=True))
            return (content or None, [_entry(e) for e in entries]) if entries else (content, None)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text, None
        if self.mode == "named":
            return None, [tool_call(self.name or "", text)]
        # the whole text at once: one entry per call, its parameters as written (as they stream)
        calls = [_entry(e) for e in RequiredCalls().deltas(text)]
        assert [c["function"]["name"] for c in calls] == [item["name"] for item in value]
        return None, calls

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """The request's sampling under the plan: a named or required call is structured output (of
        its own: not with another grammar); "auto" with a parser whose tag is a special token keeps
        special tokens in the text (as vLLM does)."""
        if self.structured is not None:
            if params.structured is not None:
                raise InvalidRequestError("tool_choice", "a tool call is structured output already: "
                                                         "drop response_format / guided_*")
            return dataclasses.replace(params, structured=self.structured)
        if self.parser in SPECIAL_TOKENS:
            return dataclasses.replace(params, skip_special_tokens=False)
        return params

    def finish_reason(self, finish: str | None) -> str | None:
        """vLLM's, for an answer that made calls: "tool_calls" for required and auto, and "stop"
        for a named function (as OpenAI's forced call); "length" stays."""
        return "tool_calls" if finish == "stop" and self.mode != "named" else finish


Piece = str | dict[str, Any]  # text that goes out as content, or a streamed tool-call entry


class ToolStream:
    """One answer's tool calls as its text streams, whatever the plan: for each piece of text, what
    goes out, in the answer's order: text (content) and OpenAI's streamed tool-call entries (a
    call's first entry has its index, id, type and name, and the arguments written so far; the next
    ones more of its arguments). "auto" gives each call as the model's parser reads it
    (gateway.tool_parsers: as it is written, or whole; with parallel_tool_calls false, the first
    only). A "required" answer cut before any call was named goes out as text with the last piece."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.count = 0  # calls begun
        self._held = ""  # "required": the text so far
        self._required = RequiredCalls() if plan.mode == "required" else None
        self._parser = PARSERS[plan.parser](plan.schemas) if plan.mode == "auto" and plan.parser is not None else None
        self._dropping = False  # "auto", parallel_tool_calls false: the call being read is not the first

    def feed(self, text: str, final: bool) -> list[Piece]:
        if self._parser is not None:
            return self._auto(self._parser.feed(text) + (self._parser.finish() if final else []))
        if self._required is not None:
            self._held += text
            entries: list[Piece] = list(self._required.deltas(text))
            self.count = self._required.count
            return [self._held] if final and not self.count and self._held else entries
        if self.count:  # named: its one call, announced with the first piece
            return [{"index": 0, "function": {"arguments": text}}] if text else []
        self.count = 1
        return [{"index": 0, **tool_call(self.plan.name or "", text)}]

    def _auto(self, parsed: list[Parsed]) -> list[Piece]:
        """The parser's pieces as chat's: a call begun (or whole) is its first entry, more of its
        arguments go on the entry before where it is this call's, else in one of their own."""
        out: list[Piece] = []
        for p in parsed:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, CallArgs):
                if not self._dropping:
                    last = out[-1] if out else None
                    if isinstance(last, dict) and last["index"] == self.count - 1:
                        last["function"]["arguments"] += p.text
                    else:
                        out.append({"index": self.count - 1, "function": {"arguments": p.text}})
            elif self.plan.single and self.count:  # OpenAI's parallel_tool_calls false: one call
                self._dropping = True
            else:
                out.append({"index": self.count, **tool_call(p.name, p.arguments if isinstance(p, Call) else "")})
                self.count += 1
        return out

    def finish_reason(self, finish: str | None) -> str | None:
        return self.plan.finish_reason(finish) if self.count else finish


def split(pieces: list[Piece]) -> tuple[str, list[dict[str, Any]]]:
    """Pieces as chat's delta has them: the text joined, the entries."""
    return "".join(p for p in pieces if isinstance(p, str)), [p for p in pieces if not isinstance(p, str)]


def _entry(streamed: dict[str, Any]) -> dict[str, Any]:
    """A streamed call's entry as a whole message's: no index."""
    return {k: v for k, v in streamed.items() if k != "index"}


class RequiredCalls(JsonStrings):
    """"required"'s answer read as it streams: ``[{"name": ..., "parameters": ...}, ...]``, the
    shape and key order its grammar fixes (whitespace may come anywhere between tokens). ``feed``
    gives, in order, ("call", name) once a call's name is whole and ("args", text) for its
    parameters' text as it comes, so a stream can send each call as vLLM and OpenAI stream them."""

    def __init__(self) -> None:
        self.depth = 0  # brackets open: 1 in the list, 2 in a call's object
        self.expect_key = False  # in a call's object: the next string is a key
        self.key = ""
        self.chars: list[str] = []  # a string of the call's object being read (a key, the name)
        self.capturing = False  # in the parameters' value
        self.started = False  # its first character came
        self.nested = 0  # brackets open within it
        self.primitive = False  # a number or literal: it ends at "," "}" or whitespace
        self.count = 0  # calls named so far

    def feed(self, text: str) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        args: list[str] = []

        def flush() -> None:
            if args:
                events.append(("args", "".join(args)))
                args.clear()

        for ch in text:
            if self.in_string:
                self.string_char(ch)
                if self.capturing:
                    args.append(ch)
                    self.capturing = self.in_string or self.nested > 0  # a string value ends with its quote
                elif self.depth == 2:
                    if self.in_string:
                        self.chars.append(ch)
                    elif self.expect_key:
                        self.key = json.loads('"' + "".join(self.chars) + '"')
                    elif self.key == "name":
                        flush()
                        events.append(("call", json.loads('"' + "".join(self.chars) + '"')))
                        self.count += 1
                continue
            if self.capturing:
                if not self.started:
                    if ch.isspace():
                        continue
                    self.started = True
                    self.primitive = ch not in '{["'
                if self.primitive and (ch in ",}" or ch.isspace()):
                    self.capturing = False  # and the character is read below as the object's
                else:
                    args.append(ch)
                    if ch == '"':
                        self.in_string = True
                    elif ch in "{[":
                        self.nested += 1
                    elif ch in "}]":
                        self.nested -= 1
                        self.capturing = self.nested > 0
                    continue
            if ch == '"':
                self.in_string = True
                self.chars = []
            elif ch in "{[":
                self.depth += 1
                self.expect_key = self.depth == 2
            elif ch in "}]":
                self.depth -= 1
            elif self.depth == 2 and ch == ",":
                self.expect_key = True
            elif self.depth == 2 and ch == ":":
                self.expect_key = False
                if self.key == "parameters":
                    self.capturing, self.started, self.nested = True, False, 0
        flush()
        return events

    def deltas(self, text: str) -> list[dict[str, Any]]:
        """``feed``'s events as OpenAI's streamed tool-call entries: a call's first has its index,
        id, type and name (and the arguments that came with it); the next ones its arguments."""
        k = self.count - 1  # the call being written
        entries: list[dict[str, Any]] = []
        for kind, s in self.feed(text):
            if kind == "call":
                k += 1
                entries.append({"index": k, **tool_call(s, "")})
            elif entries and entries[-1]["index"] == k:
                entries[-1]["function"]["arguments"] += s
            else:
                entries.append({"index": k, "function": {"arguments": s}})
        return entries


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def template_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The request's tools, checked (OpenAI's ``{"type": "function", "function": {...}}``)."""
    tools = body.get("tools")
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise InvalidRequestError("tools", "must be a list of {type: function, function: {...}}")
    names = set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"tools[{i}]", 'must be {"type": "function", "function": {"name": ...}}')
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise InvalidRequestError(f"tools[{i}].function.parameters", "must be a JSON schema object")
        if fn["name"] in names:
            raise InvalidRequestError(f"tools[{i}]", f"two tools are named {fn['name']!r}")
        names.add(fn["name"])
    return tools


def tool_plan(body: dict[str, Any], parser: str | None = None) -> ToolPlan | None:
    """What ``tool_choice`` asks of the answer; None for a text answer. ``parser``: the server's
    parser of the model's tool-call format, for "auto" (None: the server has none)."""
    tools = template_tools(body) or []
    choice = body.get("tool_choice")
    if choice is None and tools and parser is not None:
        choice = "auto"  # vLLM's default where tools are given
    if choice is None or choice == "none":
        return None
    if choice == "auto" and parser is None:
        raise InvalidRequestError("tool_choice", '"auto" needs a parser of the model\'s tool-call format: start the '
                                                 'server with --enable-auto-tool-choice --tool-call-parser NAME, '
                                                 'or name the function, or use "required"')
    if not tools:
        raise InvalidRequestError("tool_choice", "needs tools")
    params = {t["function"]["name"]: t["function"].get("parameters") or _NO_PARAMETERS for t in tools}
    if choice == "auto":
        return ToolPlan("auto", None, None, parser, single=body.get("parallel_tool_calls") is False, schemas=params)
    if choice == "required":
        items = [{"type": "object", "properties": {"name": {"const": name}, "parameters": schema},
                  "required": ["name", "parameters"], "additionalProperties": False}
                 for name, schema in params.items()]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        if body.get("parallel_tool_calls") is False:  # OpenAI's: at most one call
            schema["maxItems"] = 1
        return ToolPlan("required", None, StructuredSpec("json_schema", json.dumps(schema)))
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        else None
    if not isinstance(name, str):
        raise InvalidRequestError("tool_choice", 'must be "none", "required" or {"type": "function", "function": {"name": ...}}')
    if name not in params:
        raise InvalidRequestError("tool_choice", f"no tool is named {name!r}")
    return ToolPlan("named", name, StructuredSpec("json_schema", json.dumps(params[name])))

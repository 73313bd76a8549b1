"""OpenAI tool calling without a model-specific parser, as vLLM does it by structured output.

``tool_choice`` naming a function constrains the answer to that function's parameters schema; the
answer becomes the call's arguments. ``"required"`` constrains it to a JSON list of
``{"name", "parameters"}`` objects, one schema per tool, which becomes one call each. ``"auto"``
would need a parser of the model's own tool-call format (vLLM's ``--tool-call-parser``): it gets a
400, as vLLM gives without ``--enable-auto-tool-choice``. ``"none"`` (the default, as in vLLM)
answers in text; the tools still reach the chat template either way.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from engine.errors import InvalidRequestError
from engine.structured import StructuredSpec

_NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    mode: Literal["named", "required"]
    name: str | None  # the named function; None for "required"
    structured: StructuredSpec  # what the answer must follow

    def calls(self, text: str) -> list[dict[str, Any]] | None:
        """The answer as OpenAI tool calls; None if it is not complete JSON (cut by max_tokens)."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if self.mode == "named":
            return [tool_call(self.name or "", text)]
        # the whole text at once: one entry per call, its parameters as written (as they stream)
        calls = [{k: v for k, v in e.items() if k != "index"} for e in RequiredCalls().deltas(text)]
        assert [c["function"]["name"] for c in calls] == [item["name"] for item in value]
        return calls

    def finish_reason(self, finish: str | None) -> str | None:
        """vLLM's: a call that ended by its grammar finishes with "tool_calls" for required and
        "stop" for a named function (as OpenAI's forced call); "length" stays."""
        return "tool_calls" if finish == "stop" and self.mode == "required" else finish


class RequiredCalls:
    """"required"'s answer read as it streams: ``[{"name": ..., "parameters": ...}, ...]``, the
    shape and key order its grammar fixes (whitespace may come anywhere between tokens). ``feed``
    gives, in order, ("call", name) once a call's name is whole and ("args", text) for its
    parameters' text as it comes, so a stream can send each call as vLLM and OpenAI stream them."""

    def __init__(self) -> None:
        self.depth = 0  # brackets open: 1 in the list, 2 in a call's object
        self.in_string = False
        self.escaped = False
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
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
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


def tool_plan(body: dict[str, Any]) -> ToolPlan | None:
    """What ``tool_choice`` asks of the answer; None for a text answer."""
    tools = template_tools(body) or []
    choice = body.get("tool_choice")
    if choice is None or choice == "none":
        return None
    if choice == "auto":
        raise InvalidRequestError("tool_choice", '"auto" needs a parser of the model\'s tool-call format, which '
                                                 'this server does not have: name the function, or use "required"')
    if not tools:
        raise InvalidRequestError("tool_choice", "needs tools")
    params = {t["function"]["name"]: t["function"].get("parameters") or _NO_PARAMETERS for t in tools}
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

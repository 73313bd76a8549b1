"""What a parser of a model's tool-call format (gateway.tool_parsers, gateway.tagged_tool_parsers)
gives as it reads an answer: text, and calls, whole or as they are written.

A call goes out whole (``Call``) where the format only tells a call once it has read all of it;
else as it is written: ``CallStart`` once its name is known, then ``CallArgs`` with more of its
arguments' JSON as the model writes them, so a client sees a long call (a file's content) stream
as vLLM streams it. The ``CallArgs`` after a ``CallStart`` join to the call's arguments.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, NamedTuple, Protocol


class Call(NamedTuple):
    name: str
    arguments: str  # JSON, as OpenAI's API carries it


class CallStart(NamedTuple):
    """A call begun: its arguments follow as CallArgs."""
    name: str


class CallArgs(NamedTuple):
    """More of the arguments (JSON text) of the call begun last."""
    text: str


Piece = str | Call | CallStart | CallArgs  # text, a whole call, a call begun, more of its arguments
Schemas = Mapping[str, Mapping[str, Any]]  # each tool's parameters schema, by name (a parser may type values by it)


class ToolParser(Protocol):
    count: int  # calls given out (whole or begun)

    def feed(self, text: str) -> list[Piece]: ...

    def finish(self) -> list[Piece]: ...


def calls_of(pieces: list[Piece]) -> tuple[str, list[Call]]:
    """Pieces as the text and the whole calls they make (each begun call with its arguments joined)."""
    text: list[str] = []
    calls: list[Call] = []
    for p in pieces:
        if isinstance(p, str):
            text.append(p)
        elif isinstance(p, Call):
            calls.append(p)
        elif isinstance(p, CallStart):
            calls.append(Call(p.name, ""))
        else:
            calls[-1] = Call(calls[-1].name, calls[-1].arguments + p.text)
    return "".join(text), calls


def json_call(value: object) -> Call | None:
    """A parsed JSON value as a call: ``{"name", "arguments"}`` (or Llama's ``"parameters"``)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return Call(value["name"], json.dumps(arguments, ensure_ascii=False))


_CALL_START = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)+)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


def json_call_start(text: str) -> tuple[str, int] | None:
    """Where a JSON call ``{"name": "...", "arguments": {`` (or ``"parameters"``) has begun in
    ``text``: its name and where its arguments' object starts; None until then (or for another shape)."""
    m = _CALL_START.match(text)
    if m is None:
        return None
    try:
        return json.loads('"' + m.group(1) + '"'), m.end()
    except json.JSONDecodeError:
        return None


class JsonStrings:
    """Where a streamed JSON text's strings are, a character at a time (their escapes skipped)."""

    in_string = False
    escaped = False

    def string_char(self, ch: str) -> None:
        """``ch``, read inside a string: an escape, the closing quote, or text."""
        if self.escaped:
            self.escaped = False
        elif ch == "\\":
            self.escaped = True
        elif ch == '"':
            self.in_string = False


class JsonExtent(JsonStrings):
    """Where a JSON object or array ends, read as it streams (strings and escapes skipped)."""

    def __init__(self, depth: int = 0) -> None:
        """``depth``: brackets already open (1: read from inside an object to its end)."""
        self.depth = depth
        self.done = False

    def scan(self, text: str, start: int) -> int:
        """Reads ``text[start:]`` up to the value's end; the index after what was read."""
        i = start
        while i < len(text) and not self.done:
            ch = text[i]
            i += 1
            if self.in_string:
                self.string_char(ch)
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                self.done = self.depth == 0
        return i


class BegunCall:
    """A JSON call whose name went out (CallStart): its arguments read as they come (CallArgs),
    then, where the call is an object of its own, the rest of it to its end."""

    def __init__(self, args_at: int, in_object: bool) -> None:
        """``args_at``: where the arguments' object starts in the call's text."""
        self.at = args_at
        self.args = JsonExtent()
        self.rest = JsonExtent(depth=1) if in_object else None

    def read(self, text: str, out: list[Piece]) -> int | None:
        """Reads on in ``text`` (the call's, from its start, as it grows); the index after the
        call once it ended, else None."""
        if not self.args.done:
            start, self.at = self.at, self.args.scan(text, self.at)
            if self.at > start:
                out.append(CallArgs(text[start:self.at]))
            if not self.args.done:
                return None
        if self.rest is not None:
            self.at = self.rest.scan(text, self.at)
            if not self.rest.done:
                return None
        return self.at


def partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag`` (0 if none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0

"""Parsers of a model's own tool-call format, for ``tool_choice: "auto"`` (vLLM's
``--enable-auto-tool-choice --tool-call-parser NAME``): the model answers in text, calls or both,
and the parser tells them apart, streamed or whole.

A parser is fed the answer's text as it comes and gives what can go out now, in the answer's
order: text, and calls (gateway.tool_pieces): as they are written where the format tells a call
by its start (Hermes's and Qwen3-Coder's blocks, gateway.tagged_tool_parsers; Llama 3's JSON and
Mistral's calls here), else each once it is whole (a Python list of calls: only its end tells). ``finish`` gives the rest. Fed the whole answer at
once, it gives what the stream gave in pieces, so a streamed answer and a whole one agree however
the text was cut.
"""
from __future__ import annotations

import ast
import json
from typing import Callable

from gateway.tagged_tool_parsers import HermesParser, Qwen3CoderParser
from gateway.tool_pieces import (
    BegunCall, Call, CallStart, Piece, Schemas, ToolParser, json_call, json_call_start, partial_suffix,
)

__all__ = ["PARSERS", "SPECIAL_TOKENS", "Call", "HermesParser", "MistralParser", "Piece", "partial_suffix"]


class Llama3JsonParser:
    """Llama 3.1 and 3.2's JSON calls (vLLM's ``llama3_json``): an answer that calls is nothing but
    calls, ``{"name": ..., "parameters": {...}}``, several separated by ``;``, perhaps after
    ``<|python_tag|>``. An answer whose first character (past whitespace) is not ``{`` is text,
    streamed as it comes. In a calling answer a call goes out as it is written once
    ``{"name": "...", "parameters": {`` (or ``"arguments"``) has come, its arguments as the model
    writes them; a call of another shape (the name after its arguments) once its JSON is whole.
    What follows the calls and is not one (a JSON that is not a call, or one never closed that did
    not begin as one) is text, as written."""

    TAG = "<|python_tag|>"

    def __init__(self, schemas: Schemas) -> None:
        self._buf = ""  # the calls' text not yet read; a begun call's from its start
        self._mode: str | None = None  # "text" or "calls" once the answer's start tells
        self._call: BegunCall | None = None
        self.count = 0

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        if self._mode is None:
            start = self._buf.lstrip()
            if start.startswith(self.TAG):
                start = start[len(self.TAG):].lstrip()
            if not start or self.TAG.startswith(start):  # nothing yet, or the tag's first characters
                return []
            self._mode = "calls" if start.startswith("{") else "text"
            if self._mode == "calls":
                self._buf = start
        if self._mode == "text":
            out, self._buf = self._buf, ""
            return [out] if out else []
        out: list[Piece] = []
        while self._more(out):
            pass
        return out

    def _more(self, out: list[Piece]) -> bool:
        """Reads on in the calls; whether to go on (a call ended, or one began)."""
        if self._call is not None:  # a begun call: its arguments, then the rest of its object
            end = self._call.read(self._buf, out)
            if end is None:
                return False
            self._buf, self._call = self._buf[end:], None
            return True
        rest = self._buf.lstrip().lstrip(";").lstrip()
        if not rest:
            return False
        start = json_call_start(rest)
        if start is not None:
            name, at = start
            self._buf, self._call = rest, BegunCall(at, in_object=True)
            self.count += 1
            out.append(CallStart(name))
            return True
        try:
            value, end = json.JSONDecoder().raw_decode(rest)
        except json.JSONDecodeError:
            return False  # not whole yet (or never: finish gives it back as text)
        call = json_call(value)
        if call is None:  # JSON, but not a call: the rest of the answer is text
            self._mode = "text"
            self._buf = ""
            out.append(rest)
            return False
        self.count += 1
        out.append(call)
        self._buf = rest[end:]
        return True

    def finish(self) -> list[Piece]:
        if self._call is not None:  # a call cut before its end: it went out as far as it was written
            self._buf, self._call = "", None
            return []
        rest, self._buf = self._buf.strip() if self.count else self._buf, ""
        return [rest] if rest else []


class MistralParser:
    """Mistral's calls, after its ``[TOOL_CALLS]`` token (vLLM's ``mistral``); the text before it is
    the content. Two shapes follow it: a JSON list of calls, ``[{"name": ..., "arguments": {...}}]``
    (tokenizers up to v7: Mistral 7B v0.3, Mixtral 8x22B, Mistral Nemo and Small up to 3.1), or
    ``NAME[ARGS]{...}``, each call after a ``[TOOL_CALLS]`` of its own (v11 on: Mistral Small 3.2,
    Devstral, Magistral). A call goes out as it is written once its name and its arguments' ``{``
    have come, its arguments as the model writes them (a call of another shape once its JSON is
    whole); what follows the calls and is not one is text, as written (all of it, the token too,
    where nothing after the token was a call). The token is a special one: a request that may call
    keeps special tokens in its text (``SPECIAL_TOKENS``), as vLLM makes it."""

    TAG, ARGS = "[TOOL_CALLS]", "[ARGS]"

    def __init__(self, schemas: Schemas) -> None:
        self._buf = ""  # after the first token: what was not read yet; a begun call's from its arguments
        self._after = ""  # everything after the first token (given back whole if no call came)
        self._calling = False  # past the first [TOOL_CALLS]
        self._space = ""  # the content's trailing whitespace, held back
        self._list = False  # in a JSON list of calls
        self._text = False  # past the calls: the rest is text
        self._call: BegunCall | None = None
        self.count = 0

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        if self._calling:
            self._after += text
        self._buf += text
        if not self._calling:
            tag = self._buf.find(self.TAG)
            end = tag if tag >= 0 else len(self._buf) - partial_suffix(self._buf, self.TAG)
            held = self._space + self._buf[:end]
            kept = held.rstrip()  # whitespace before the token is not content
            self._space = "" if tag >= 0 else held[len(kept):]
            if kept:
                out.append(kept)
            if tag < 0:
                self._buf = self._buf[end:]
                return out
            self._calling, self._buf = True, self._buf[tag + len(self.TAG):]
            self._after = self._buf
        if self._text:  # past the calls (none came: all of it goes out at the end, as written)
            if self.count and self._buf:
                out.append(self._buf)
            self._buf = ""
            return out
        while self._more(out):
            pass
        return out

    def _more(self, out: list[Piece]) -> bool:
        """Reads on after the token; whether to go on (a call ended or began, a list opened or closed)."""
        if self._call is not None:  # a begun call: its arguments, then (in a list) the rest of its object
            end = self._call.read(self._buf, out)
            if end is None:
                return False
            self._buf, self._call = self._buf[end:], None
            return True
        rest = self._buf.lstrip()
        if self._list:
            if rest.startswith((",", "]")):
                self._buf, self._list = rest[1:], rest.startswith(",")
                return True
            start = json_call_start(rest) if rest.startswith("{") else None
            if start is not None:
                return self._begin(rest, *start, out)
            try:
                value, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError:
                return False  # not whole yet
            return self._whole(json_call(value), rest, end, out)
        if rest.startswith(self.TAG):
            rest = rest[len(self.TAG):].lstrip()
        if not rest or self.TAG.startswith(rest):  # nothing yet, or the next token's first characters
            return False
        if rest.startswith("["):
            self._buf, self._list = rest[1:], True
            return True
        name, sep, args = rest.partition(self.ARGS)  # NAME[ARGS]{...}
        if not sep:
            return False  # not yet (or never: finish gives it back as text)
        body = args.lstrip()
        if body.startswith("{"):
            return self._begin(body, name.strip(), 0, out)
        try:
            arguments, used = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            return False
        return self._whole(json_call({"name": name.strip(), "arguments": arguments}), body, used, out)

    def _begin(self, text: str, name: str, args_at: int, out: list[Piece]) -> bool:
        self._buf, self._call = text, BegunCall(args_at, in_object=self._list)
        self.count += 1
        out.append(CallStart(name))
        return True

    def _whole(self, call: Call | None, text: str, end: int, out: list[Piece]) -> bool:
        if call is None:  # not a call: the rest is text (all of it, with the token, if no call came)
            self._text = True
            if self.count:
                out.append(text)
            self._buf = "" if self.count else text
            return False
        self.count += 1
        out.append(call)
        self._buf = text[end:]
        return True

    def finish(self) -> list[Piece]:
        rest, self._buf = self._buf, ""
        if not self._calling:  # no call: the text as written
            tail = self._space + rest
        elif self._call is not None:  # a call cut before its end: it went out as far as it was written
            tail = ""
        elif self.count:
            tail = rest.strip() if not self._text else rest
        else:  # nothing after the token was a call
            tail = self.TAG + self._after
        self._space, self._call = "", None
        return [tail] if tail else []


class PythonicParser:
    """Calls written as a Python list (vLLM's ``pythonic``: Llama 3.2 and 4, ToolACE):
    ``[get_weather(city="Paris"), get_time()]``, the arguments Python literals, perhaps inside
    ``<|python_start|>`` ... ``<|python_end|>``. An answer whose first character (past whitespace
    and the tag) is not ``[`` is text, streamed as it comes; a calling answer is read whole at its
    end (a list is only known to be whole, and nothing after it, when the answer ends), and stays
    text, as written, if it is not a list of calls."""

    START, END = "<|python_start|>", "<|python_end|>"

    def __init__(self, schemas: Schemas) -> None:
        self._buf = ""
        self._calls: bool | None = None  # whether the answer reads as calls, once its start tells
        self.count = 0

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        if self._calls is None:
            head = self._buf.lstrip().removeprefix(self.START).lstrip()
            if not head or self.START.startswith(self._buf.lstrip()):
                return []  # nothing yet, or the tag's first characters
            self._calls = head.startswith("[")
        if self._calls:
            return []
        out, self._buf = self._buf, ""
        return [out] if out else []

    def finish(self) -> list[Piece]:
        text, self._buf = self._buf, ""
        if self._calls:
            calls = _python_calls(text.strip().removeprefix(self.START).removesuffix(self.END).strip())
            if calls is not None:
                self.count = len(calls)
                return list(calls)
        return [text] if text else []


def _python_calls(text: str) -> list[Call] | None:
    """``[f(a=1), g()]`` as calls; None if it is not a list of calls with literal keyword arguments."""
    try:
        tree = ast.parse(text, mode="eval").body
        if not isinstance(tree, ast.List):
            return None
        calls = []
        for node in tree.elts:
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
                return None
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
            if len(arguments) != len(node.keywords):
                return None  # **kwargs
            calls.append(Call(node.func.id, json.dumps(arguments, ensure_ascii=False)))
        return calls
    except (SyntaxError, ValueError, TypeError):
        return None


PARSERS: dict[str, Callable[[Schemas], ToolParser]] = {
    "hermes": HermesParser, "qwen3_coder": Qwen3CoderParser, "llama3_json": Llama3JsonParser, "mistral": MistralParser,
    "pythonic": PythonicParser}
SPECIAL_TOKENS = {"mistral"}  # parsers whose tag is a special token: a request that may call keeps them in its text

"""Parsers of a model's own tool-call format, for ``tool_choice: "auto"`` (vLLM's
``--enable-auto-tool-choice --tool-call-parser NAME``): the model answers in text, calls or both,
and the parser tells them apart, streamed or whole.

A parser is fed the answer's text as it comes and gives what can go out now, in the answer's
order: text, and each call once it is whole. ``finish`` gives the rest. Fed the whole answer at
once, it gives what the stream gave in pieces, so a streamed answer and a whole one agree however
the text was cut.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any, Callable, Mapping, NamedTuple, Protocol


class Call(NamedTuple):
    name: str
    arguments: str  # JSON, as OpenAI's API carries it


Piece = str | Call  # text, or a call made whole
Schemas = Mapping[str, Mapping[str, Any]]  # each tool's parameters schema, by name (a parser may type values by it)


class TaggedCallsParser:
    """Calls in ``<tool_call>...</tool_call>`` blocks, with or without text before them; what a
    block holds is the format's (``_call``).

    The text outside the tags is the content. Whitespace next to a call is not: it is held back
    until text follows it, dropped when a call follows it, and dropped at the end once a call was
    made (an answer with no call keeps its text as written). A block that is not a call stays
    text, tags and all; so does a block the answer leaves open, unless what it holds is a whole
    call (vLLM's parsers read an open last block as a call)."""

    START, END = "<tool_call>", "</tool_call>"

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self._buf = ""  # text not yet given out: a tag's possible start, or an open block's body
        self._in_call = False
        self._space = ""  # whitespace held back
        self.count = 0  # calls given out

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while True:
            if self._in_call:
                end = self._buf.find(self.END)
                if end < 0:
                    break
                body, self._buf, self._in_call = self._buf[:end], self._buf[end + len(self.END):], False
                self._block(body, self.END, out)
                continue
            start = self._buf.find(self.START)
            if start >= 0:
                self._text(self._buf[:start], out)
                self._buf, self._in_call = self._buf[start + len(self.START):], True
                continue
            keep = partial_suffix(self._buf, self.START)  # may be a tag's first characters
            self._text(self._buf[:len(self._buf) - keep], out)
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return out

    def finish(self) -> list[Piece]:
        """The end of the answer: what was held back, an open block read as a call if it is one."""
        out: list[Piece] = []
        if self._in_call:
            self._block(self._buf, "", out)
        else:
            self._text(self._buf, out)
        self._buf, self._in_call = "", False
        if not self.count and self._space:
            out.append(self._space)
        self._space = ""
        return out

    def _text(self, text: str, out: list[Piece]) -> None:
        held = self._space + text
        kept = held.rstrip()
        self._space = held[len(kept):]
        if kept:
            out.append(kept)

    def _call(self, body: str) -> Call | None:
        raise NotImplementedError

    def _block(self, body: str, end_tag: str, out: list[Piece]) -> None:
        call = self._call(body)
        if call is None:  # not a call: the block stays text, as written
            self._text(self.START + body + end_tag, out)
            return
        self._space = ""  # whitespace before a call is not content
        self.count += 1
        out.append(call)


class HermesParser(TaggedCallsParser):
    """Hermes's format (Qwen2.5 and Qwen2.5-Coder, Hermes 2 and 3, and the templates written after
    them): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the JSON usually on its own
    line."""

    def _call(self, body: str) -> Call | None:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        return _call(value)


class Qwen3CoderParser(TaggedCallsParser):
    """Qwen3-Coder's XML format (vLLM's ``qwen3_coder``): ``<tool_call><function=NAME>`` then each
    argument as ``<parameter=KEY>value</parameter>``, each tag on its own line, then
    ``</function></tool_call>``. A value is text; the tool's schema gives its type (a string stays
    text, an integer or number is read as one, a boolean from true/false, an object or array as
    JSON; ``null`` is null); a value the schema does not type, or that does not read as its type,
    stays text."""

    FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)(?:</function>\s*)?$", re.DOTALL)
    PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)

    def _call(self, body: str) -> Call | None:
        m = self.FUNCTION.fullmatch(body)
        if m is None:
            return None
        name = m.group(1).strip()
        properties = (self.schemas.get(name) or {}).get("properties") or {}
        arguments: dict[str, object] = {}
        for key, raw in self.PARAMETER.findall(m.group(2)):
            key = key.strip()
            arguments[key] = _typed_value(raw.removeprefix("\n").removesuffix("\n"), properties.get(key))
        return Call(name, json.dumps(arguments, ensure_ascii=False))


def _typed_value(text: str, schema: object) -> object:
    """A parameter's text as its schema's type (text where it does not read as one)."""
    if text.strip().lower() == "null":
        return None
    kind = schema.get("type") if isinstance(schema, dict) else None
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    try:
        if kind == "integer":
            return int(text.strip())
        if kind == "number":
            number = float(text.strip())
            return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
        if kind == "boolean":
            return {"true": True, "false": False}[text.strip().lower()]
        if kind in ("object", "array"):
            return json.loads(text)
    except (ValueError, KeyError):
        pass
    return text


class Llama3JsonParser:
    """Llama 3.1 and 3.2's JSON calls (vLLM's ``llama3_json``): an answer that calls is nothing but
    calls, ``{"name": ..., "parameters": {...}}``, several separated by ``;``, perhaps after
    ``<|python_tag|>``. An answer whose first character (past whitespace) is not ``{`` is text,
    streamed as it comes. In a calling answer each call goes out once its JSON is whole; what
    follows the last whole call and is not one (a JSON that is not a call, or is never closed)
    is text, as written."""

    TAG = "<|python_tag|>"

    def __init__(self, schemas: Schemas) -> None:
        self._buf = ""
        self._mode: str | None = None  # "text" or "calls" once the answer's start tells
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
        decoder = json.JSONDecoder()
        while True:
            rest = self._buf.lstrip().lstrip(";").lstrip()
            if not rest:
                break
            try:
                value, end = decoder.raw_decode(rest)
            except json.JSONDecodeError:
                break  # not whole yet (or never: finish gives it back as text)
            call = _call(value)
            if call is None:  # JSON, but not a call: the rest of the answer is text
                self._mode = "text"
                self._buf = ""
                out.append(rest)
                break
            self.count += 1
            out.append(call)
            self._buf = rest[end:]
        return out

    def finish(self) -> list[Piece]:
        rest, self._buf = self._buf.strip() if self.count else self._buf, ""
        return [rest] if rest else []


class MistralParser:
    """Mistral's calls, after its ``[TOOL_CALLS]`` token (vLLM's ``mistral``); the text before it is
    the content. Two shapes follow it: a JSON list of calls, ``[{"name": ..., "arguments": {...}}]``
    (tokenizers up to v7: Mistral 7B v0.3, Mixtral 8x22B, Mistral Nemo and Small up to 3.1), or
    ``NAME[ARGS]{...}``, each call after a ``[TOOL_CALLS]`` of its own (v11 on: Mistral Small 3.2,
    Devstral, Magistral). Each call goes out once its JSON is whole; what follows them and is not
    one is text, as written. The token is a special one: a request that may call keeps special
    tokens in its text (``SPECIAL_TOKENS``), as vLLM makes it."""

    TAG, ARGS = "[TOOL_CALLS]", "[ARGS]"

    def __init__(self, schemas: Schemas) -> None:
        self._buf = ""
        self._calling = False  # past the first [TOOL_CALLS]
        self._space = ""  # the content's trailing whitespace, held back
        self.count = 0

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
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
        decoder = json.JSONDecoder()
        while True:
            rest = self._buf.lstrip()
            if rest.startswith(self.TAG):
                rest = rest[len(self.TAG):].lstrip()
            if not rest:
                break
            try:
                if rest.startswith("["):  # a list of calls
                    value, end = decoder.raw_decode(rest)
                    calls = [_call(v) for v in value] if isinstance(value, list) else [None]
                else:  # NAME[ARGS]{...}
                    name, sep, args = rest.partition(self.ARGS)
                    if not sep:
                        break
                    arguments, used = decoder.raw_decode(args.lstrip())
                    end = len(rest) - len(args.lstrip()) + used
                    calls = [_call({"name": name.strip(), "arguments": arguments})]
            except json.JSONDecodeError:
                break  # not whole yet (or never: finish gives it back as text)
            if any(c is None for c in calls):
                break
            out += [c for c in calls if c is not None]
            self.count += len(calls)
            self._buf = rest[end:]
        return out

    def finish(self) -> list[Piece]:
        rest, self._buf = self._buf, ""
        if not self._calling:  # no call: the text as written
            tail = self._space + rest
        elif self.count:
            tail = rest.strip()
        else:  # nothing after the token was a call
            tail = self.TAG + rest
        self._space = ""
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


def _call(value: object) -> Call | None:
    """A parsed JSON value as a call: ``{"name", "arguments"}`` (or Llama's ``"parameters"``)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return Call(value["name"], json.dumps(arguments, ensure_ascii=False))


def partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag`` (0 if none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolParser(Protocol):
    count: int  # calls given out

    def feed(self, text: str) -> list[Piece]: ...

    def finish(self) -> list[Piece]: ...


PARSERS: dict[str, Callable[[Schemas], ToolParser]] = {
    "hermes": HermesParser, "qwen3_coder": Qwen3CoderParser, "llama3_json": Llama3JsonParser, "mistral": MistralParser,
    "pythonic": PythonicParser}
SPECIAL_TOKENS = {"mistral"}  # parsers whose tag is a special token: a request that may call keeps them in its text

"""Tool-call formats that put each call in a ``<tool_call>...</tool_call>`` block: Hermes's (JSON)
and Qwen3-Coder's (XML). A call goes out as it is written (gateway.tool_pieces): begun once the
block's start names the function, its arguments as the model writes them, so a long call (a file's
content) streams instead of arriving whole at its end."""
from __future__ import annotations

import json
import re

from gateway.tool_pieces import (
    Call, CallArgs, CallStart, JsonExtent, Piece, Schemas, json_call, json_call_start, partial_suffix,
)


class TaggedCallsParser:
    """Calls in ``<tool_call>...</tool_call>`` blocks, with or without text before them; what a
    block holds is the format's.

    A block whose start reads as a call (``_begin``: the function's name) goes out as a call from
    then on, its arguments as they come (``_args``); one that does not is read whole at its end
    (``_call``). The text outside the tags is the content. Whitespace next to a call is not: it is
    held back until text follows it, dropped when a call follows it, and dropped at the end once a
    call was made (an answer with no call keeps its text as written). A block that is not a call
    stays text, tags and all; so does a block the answer leaves open, unless what it holds is a
    call (vLLM's parsers read an open last block as a call)."""

    START, END = "<tool_call>", "</tool_call>"

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self._buf = ""  # text not yet given out: a tag's possible start, or an open block's body
        self._in_call = False
        self._calling = False  # the open block is a call, begun
        self._space = ""  # whitespace held back
        self.count = 0  # calls given out (whole or begun)

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while True:
            if self._in_call:
                end = self._buf.find(self.END)
                if end < 0:  # the body so far, but a possible end tag's first characters
                    self._progress(self._buf[:len(self._buf) - partial_suffix(self._buf, self.END)], False, out)
                    break
                body, self._buf, self._in_call = self._buf[:end], self._buf[end + len(self.END):], False
                self._close(body, self.END, out)
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
            self._close(self._buf, "", out)
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

    # ---- the format's: a block read as it comes, or whole ---------------------------------
    def _begin(self, body: str) -> str | None:
        """The function's name once the block's start (``body``, so far) reads as a call; None
        until then. Sets where its arguments begin."""
        return None

    def _args(self, body: str, closed: bool) -> str:
        """More of the begun call's arguments (JSON) in ``body`` (the block so far, all of it once
        ``closed``); once closed, all the rest of them."""
        raise NotImplementedError

    def _call(self, body: str) -> Call | None:
        """A whole block that did not begin as a call: the call it is, if any."""
        raise NotImplementedError

    def _progress(self, body: str, closed: bool, out: list[Piece]) -> None:
        if not self._calling:
            name = self._begin(body)
            if name is None:
                return
            self._calling, self._space = True, ""  # whitespace before a call is not content
            self.count += 1
            out.append(CallStart(name))
        more = self._args(body, closed)
        if more:
            out.append(CallArgs(more))

    def _close(self, body: str, end_tag: str, out: list[Piece]) -> None:
        self._progress(body, True, out)
        if self._calling:
            self._calling = False
            return
        call = self._call(body)
        if call is None:  # not a call: the block stays text, as written
            self._text(self.START + body + end_tag, out)
            return
        self._space = ""
        self.count += 1
        out.append(call)


class HermesParser(TaggedCallsParser):
    """Hermes's format (Qwen2.5 and Qwen2.5-Coder, Qwen3, Hermes 2 and 3, and the templates written
    after them): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the JSON usually on
    its own line. Begun once ``{"name": "...", "arguments": {`` (or ``"parameters"``) has come; the
    arguments are the object as the model writes it. Another shape (the name after the
    arguments, none) is read whole at the block's end."""

    def _begin(self, body: str) -> str | None:
        start = json_call_start(body)
        if start is None:
            return None
        name, self._from = start
        self._extent = JsonExtent()
        return name

    def _args(self, body: str, closed: bool) -> str:
        start = self._from
        self._from = self._extent.scan(body, start)  # (what follows the object in the block is not read)
        return body[start:self._from]

    def _call(self, body: str) -> Call | None:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        return json_call(value)


_PARAMETER_ENDS = ("</parameter>", "<parameter=", "</function>")
_TYPED = ("integer", "number", "boolean", "object", "array")  # kinds whose value is read whole


class Qwen3CoderParser(TaggedCallsParser):
    """Qwen3-Coder's XML format (vLLM's ``qwen3_coder``): ``<tool_call><function=NAME>`` then each
    argument as ``<parameter=KEY>value</parameter>``, each tag on its own line, then
    ``</function></tool_call>``. A value is text; the tool's schema gives its type (a string stays
    text, an integer or number is read as one, a boolean from true/false, an object or array as
    JSON; ``null`` is null); a value the schema does not type, or that does not read as its type,
    stays text. Begun at ``<function=NAME>``; a text value streams as it is written (once it can no
    longer be ``null``), a typed one goes out at its end."""

    FUNCTION = re.compile(r"\s*<function=([^>\n]+)>")
    PARAMETER = re.compile(r"\s*<parameter=([^>\n]+)>")

    def _begin(self, body: str) -> str | None:
        m = self.FUNCTION.match(body)
        if m is None:
            return None
        self._name = m.group(1).strip()
        self._from = m.end()  # the first character not yet read
        self._key: str | None = None  # the parameter being read
        self._value_at = 0  # where its value begins
        self._opened = False  # its value went out as a string begun
        self._sent = 0  # of its text, what went out
        self._params = 0  # parameters begun
        self._ended = False  # past </function>
        return self._name

    def _args(self, body: str, closed: bool) -> str:
        out: list[str] = []
        while not self._ended:
            rest = body[self._from:]
            if self._key is None:
                m = self.PARAMETER.match(rest)
                if m is not None:
                    self._key, self._opened, self._sent = m.group(1).strip(), False, 0
                    self._from += m.end()
                    self._value_at = self._from
                    continue
                self._ended = rest.lstrip().startswith("</function>")
                break
            ends = [i for i in (rest.find(t) for t in _PARAMETER_ENDS) if i >= 0]
            if ends or closed:
                e = min(ends) if ends else len(rest)
                out.append(self._value(body[self._value_at:self._from + e], final=True))
                self._from += e + (len("</parameter>") if rest.startswith("</parameter>", e) else 0)
                self._key = None
                continue
            hold = max(partial_suffix(rest, t) for t in _PARAMETER_ENDS)  # a tag's possible first characters
            out.append(self._value(body[self._value_at:len(body) - hold], final=False))
            break
        if closed:
            out.append("}" if self._params else "{}")
        return "".join(out)

    def _value(self, raw: str, final: bool) -> str:
        """The parameter's JSON so far: its key once its value is known to be text (or whole),
        then the text as it comes. Its text is the value less one newline at each end."""
        assert self._key is not None
        schema = ((self.schemas.get(self._name) or {}).get("properties") or {}).get(self._key)
        head = ("{" if not self._params else ", ") + json.dumps(self._key, ensure_ascii=False) + ": "
        text = raw.removeprefix("\n")
        if final:
            text = text.removesuffix("\n")
            if self._opened:
                return _escaped(text[self._sent:]) + '"'
            self._params += 1
            return head + json.dumps(_typed_value(text, schema), ensure_ascii=False)
        text = text.removesuffix("\n")  # (the last newline may be the one the value ends with)
        if _kind(schema) in _TYPED or "null".startswith(text.strip().lower()):
            return ""  # read whole at its end; or it may yet be null
        out = "" if self._opened else head + '"'
        if not self._opened:
            self._opened = True
            self._params += 1
        out += _escaped(text[self._sent:])
        self._sent = len(text)
        return out

    def _call(self, body: str) -> Call | None:
        return None  # a block that did not begin <function=...> is not a call


def _escaped(text: str) -> str:
    """``text`` as the inside of a JSON string (escaping is per character: pieces join)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _kind(schema: object) -> object:
    """A parameter schema's type (of a list of types, the first that is not null)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    return next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind


def _typed_value(text: str, schema: object) -> object:
    """A parameter's text as its schema's type (text where it does not read as one)."""
    if text.strip().lower() == "null":
        return None
    kind = _kind(schema)
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

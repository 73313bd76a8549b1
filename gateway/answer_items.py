"""An answer as the items the Responses and Messages APIs give it, in the answer's order: the
model's thinking (gateway.reasoning_parsers), its text, and each tool call (gateway.tools), built
as the text streams. Each change is a ``Change`` (an item opened, more of its text, the item
done), which each API turns into its own events; an item is done when the next one opens or the
answer ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from gateway.reasoning_parsers import reasoning_parser
from gateway.tools import ToolPlan, ToolStream

Kind = Literal["thinking", "text", "call"]


@dataclass(slots=True)
class Item:
    kind: Kind
    text: str = ""  # the thinking, the text, or the call's arguments (JSON) as written so far
    name: str = ""  # a call's function
    call_id: str = ""  # a call's id (OpenAI's shape: chatcmpl-tool-...)
    done: bool = False


class Change(NamedTuple):
    what: Literal["open", "delta", "done"]
    index: int  # the item's, in the output
    delta: str = ""  # "delta": the text added


class AnswerItems:
    def __init__(self, tools: ToolPlan | None, reasoning: str | None) -> None:
        """``tools``: the answer may call functions; ``reasoning``: the reasoning parser that tells
        the model's thinking from its answer."""
        self.tools = ToolStream(tools) if tools is not None else None
        self.thinking = reasoning_parser(reasoning) if reasoning is not None else None
        self.items: list[Item] = []
        self._open: int | None = None  # the item being written

    def feed(self, text: str, final: bool) -> list[Change]:
        """More of the answer (``final``: its end); what it changed, in order."""
        thought, text = self.thinking.feed(text, final) if self.thinking is not None else ("", text)
        changes = self._write("thinking", thought) if thought else []
        for p in self.tools.feed(text, final) if self.tools is not None else [text] if text else []:
            if isinstance(p, str):
                changes += self._write("text", p)
                continue
            fn = p["function"]
            if "id" in p:  # a new call
                changes += self._start(Item("call", name=fn["name"], call_id=p["id"]))
            if fn.get("arguments"):
                changes += self._append(fn["arguments"])
        if final:
            changes += self._finish()
        return changes

    def _write(self, kind: Kind, text: str) -> list[Change]:
        """Thinking or text: into the open item of its kind, or a new one."""
        opened = [] if self._open is not None and self.items[self._open].kind == kind else self._start(Item(kind))
        return opened + self._append(text)

    def _append(self, text: str) -> list[Change]:
        assert self._open is not None
        self.items[self._open].text += text
        return [Change("delta", self._open, text)]

    def _start(self, item: Item) -> list[Change]:
        changes = self._finish()
        self.items.append(item)
        self._open = len(self.items) - 1
        return changes + [Change("open", self._open)]

    def _finish(self) -> list[Change]:
        if self._open is None:
            return []
        k, self._open = self._open, None
        self.items[k].done = True
        return [Change("done", k)]

    def calls(self) -> list[Item]:
        return [it for it in self.items if it.kind == "call"]

    def joined(self, kind: Kind) -> str:
        return "".join(it.text for it in self.items if it.kind == kind)

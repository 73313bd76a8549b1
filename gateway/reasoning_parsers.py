"""Reasoning parsers (vLLM's ``--reasoning-parser NAME``): a reasoning model thinks before it
answers, between ``<think>`` and ``</think>``; the parser sends the thinking as the message's
``reasoning`` (and ``reasoning_content``, DeepSeek's older name that many clients read) and the
rest as its ``content``, streamed or whole.

- ``deepseek_r1``: the answer is thinking until ``</think>`` (DeepSeek-R1 and its distills, and
  Qwen3's thinking-only models, whose templates open ``<think>`` in the prompt); a ``<think>`` the
  answer itself opens with is dropped. An answer that never closes it is all thinking.
- ``qwen3``: thinking only where the answer opens ``<think>`` (Qwen3 with thinking on); an answer
  that does not is all content (thinking off: ``chat_template_kwargs: {"enable_thinking": false}``).

Text after ``</think>`` is content as the model wrote it. A tag split across chunks is held back
until it is whole, so a streamed answer splits as the whole one does however the text is cut.
"""
from __future__ import annotations

from gateway.tool_parsers import partial_suffix

START, END = "<think>", "</think>"


class ThinkParser:
    def __init__(self, starts_thinking: bool) -> None:
        self.starts_thinking = starts_thinking
        self._phase = "start"  # "start" (not yet known), "thinking" or "answer"
        self._buf = ""  # text held back: the answer's start, or a tag's possible first characters

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """Text of the answer -> (thinking, content) that can go out now (all of it when final)."""
        self._buf += text
        thinking: list[str] = []
        content: list[str] = []
        if self._phase == "start":
            head = self._buf.lstrip()
            if head.startswith(START):
                self._phase, self._buf = "thinking", head[len(START):]
            elif START.startswith(head) and not final:
                return "", ""  # perhaps the tag's first characters
            else:
                self._phase = "thinking" if self.starts_thinking else "answer"
        if self._phase == "thinking":
            end = self._buf.find(END)
            if end >= 0:
                thinking.append(self._buf[:end])
                self._phase, self._buf = "answer", self._buf[end + len(END):]
            else:
                keep = 0 if final else partial_suffix(self._buf, END)
                thinking.append(self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
        if self._phase == "answer":
            content.append(self._buf)
            self._buf = ""
        return "".join(thinking), "".join(content)


REASONING_PARSERS = {"deepseek_r1": True, "qwen3": False}  # name -> whether an answer starts thinking


def reasoning_parser(name: str) -> ThinkParser:
    return ThinkParser(REASONING_PARSERS[name])

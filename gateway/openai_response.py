"""OpenAI responses (completions and chat), streamed or whole, independent of the server; the
requests are parsed by gateway.openai_protocol."""
from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

from engine.errors import InvalidRequestError
from engine.request import GenerationChunk, TokenOut, Usage
from gateway.reasoning_parsers import ThinkParser, reasoning_parser
from gateway.token_names import TokenNames
from gateway.tools import ToolPlan, ToolStream, split


class Echo(NamedTuple):
    """What ``echo`` puts before a choice's text: a completion's prompt (and its ids), a chat's last
    assistant message (no ids)."""

    text: str
    prompt_ids: Sequence[int]


def usage_json(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {
            "accepted_prediction_tokens": u.accepted_tokens,
            "rejected_prediction_tokens": u.draft_tokens - u.accepted_tokens,
        },
    }


class ResponseShaper:
    """Builds the JSON objects of one request's response, streamed or whole; its choices are
    numbered from 0 (prompt i's sample j of n: i * n + j)."""

    def __init__(self, request_id: str, model: str, chat: bool, tokenizer: Any, logprobs: int | None,
                 return_token_ids: bool, echo: dict[int, Echo] | None = None, tools: ToolPlan | None = None,
                 prompt_logprobs: int | None = None, tokens_as_ids: bool = False, reasoning: str | None = None,
                 show_reasoning: bool = True) -> None:
        """``echo``: what goes before a choice's own text (``Echo``).
        ``tools``: the answer is a tool call (gateway.tools). ``prompt_logprobs``: vLLM's field, its
        top-k (a whole response's only: vLLM does not stream them). ``tokens_as_ids``: vLLM's
        ``return_tokens_as_token_ids``, logprobs name tokens "token_id:<id>" (a token that is part
        of a character has no text of its own). ``reasoning``: a chat answer's reasoning parser
        (gateway.reasoning_parsers), or None; ``show_reasoning`` false (vLLM's include_reasoning):
        the thinking is told from the answer but not returned."""
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.model = model
        self.chat = chat
        self.tokenizer = tokenizer
        self.logprobs = logprobs
        self.return_token_ids = return_token_ids
        self.echo = echo or {}
        self.tools = tools
        self.prompt_logprobs = prompt_logprobs
        self.names = TokenNames(tokenizer, tokens_as_ids)
        self._tool_streams: dict[int, ToolStream] = {}  # tool-call choices: their calls as they stream
        self.reasoning = reasoning
        self.show_reasoning = show_reasoning
        self._thinking: dict[int, ThinkParser] = {}  # each choice's reasoning parser
        self.created = int(time.time())
        self._started: set[int] = set()  # choices whose first delta (with the role, the echo) went out

    def _logprobs(self, tokens: list[TokenOut], echo: tuple[int, list[TokenOut]] | None = None) -> dict[str, Any] | None:
        """``echo``: the prompt's first token and the others' logprobs, before the output's (the
        first has none: null, as OpenAI gives it)."""
        if self.logprobs is None:
            return None
        if self.chat:
            return {"content": self.names.content(tokens)}
        tok = self.names.name
        names: list[str] = []
        lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        if echo is not None:
            names, lps, tops = [tok(echo[0])], [None], [None]
            tokens = [*echo[1], *tokens]
        k = self.logprobs  # a prompt token's top list may be longer (prompt_logprobs asked for more)
        return {"tokens": names + [tok(t.token_id) for t in tokens],
                "token_logprobs": lps + [t.logprob for t in tokens],
                "top_logprobs": tops + [self.names.top(t.top_ids[:k], t.top_logprobs[:k]) for t in tokens]}

    def _prompt_logprobs(self, prompt: list[TokenOut] | None) -> list[dict[str, Any] | None] | None:
        """vLLM's shape: null for the first prompt token, then for each other one its own entry and
        its top-k, by token id: {"logprob", "rank", "decoded_token"}."""
        if prompt is None:
            return None
        k = self.prompt_logprobs
        out: list[dict[str, Any] | None] = [None]
        for t in prompt:
            entry = {str(t.token_id): self._ranked(t.token_id, t.logprob, t.rank)}
            for rank, (i, lp) in enumerate(zip(t.top_ids[:k], t.top_logprobs[:k]), start=1):
                entry.setdefault(str(i), self._ranked(i, lp, rank))
            out.append(entry)
        return out

    def _ranked(self, token_id: int, logprob: float, rank: int) -> dict[str, Any]:
        return {"logprob": logprob, "rank": rank, "decoded_token": self.names.text(token_id)}

    def _choice(self, index: int, text: str, tokens: list[TokenOut], finish: str | None,
                delta: bool, prompt_logprobs: list[TokenOut] | None = None,
                stop_reason: str | int | None = None) -> dict[str, Any]:
        first = index not in self._started
        self._started.add(index)
        echo = self.echo.get(index) if first else None
        echo_lps = (echo.prompt_ids[0], prompt_logprobs) \
            if echo is not None and echo.prompt_ids and prompt_logprobs is not None and not self.chat else None
        # vLLM's stop_reason: the stop string or stop token that ended it (null for the model's own end)
        choice: dict[str, Any] = {"index": index, "logprobs": self._logprobs(tokens, echo_lps), "finish_reason": finish,
                                  "stop_reason": stop_reason}
        thought = ""
        if self.chat and self.reasoning is not None:  # the thinking, then the answer (as content, or calls)
            parser = self._thinking.setdefault(index, reasoning_parser(self.reasoning))
            thought, text = parser.feed(text, final=not delta or finish is not None)
        if echo is not None:
            text = echo.text + text
        if self.chat:
            if delta:
                d: dict[str, Any] = {"role": "assistant"} if first else {}
                if thought and self.show_reasoning:  # vLLM's name, and DeepSeek's that many clients read
                    d["reasoning"] = d["reasoning_content"] = thought
                if self.tools is not None:
                    d.update(self._tool_delta(index, text, finish, choice))
                elif text:
                    d["content"] = text
                choice["delta"] = d
            else:
                content, calls = self.tools.answer(text) if self.tools is not None else (text, None)
                choice["message"] = {"role": "assistant", "content": content}
                if self.reasoning is not None and self.show_reasoning:
                    choice["message"]["reasoning"] = choice["message"]["reasoning_content"] = thought or None
                    if thought and not content:  # all thinking (cut before it ended): no answer
                        choice["message"]["content"] = None
                if calls is not None:
                    assert self.tools is not None
                    choice["message"]["tool_calls"] = calls
                    choice["finish_reason"] = self.tools.finish_reason(finish)
        else:
            choice["text"] = text
            if self.prompt_logprobs is not None and not delta:
                choice["prompt_logprobs"] = self._prompt_logprobs(prompt_logprobs)
        if self.return_token_ids:
            choice["token_ids"] = [t.token_id for t in tokens]
        return choice

    def _tool_delta(self, index: int, text: str, finish: str | None, choice: dict[str, Any]) -> dict[str, Any]:
        """A streamed tool call, as vLLM and OpenAI stream them (gateway.tools.ToolStream): each
        call's id and name once known, then its arguments as they come ("auto": as its parser reads
        them, the text around the calls as content)."""
        assert self.tools is not None
        stream = self._tool_streams.setdefault(index, ToolStream(self.tools))
        content, entries = split(stream.feed(text, final=finish is not None))
        if finish is not None:
            choice["finish_reason"] = stream.finish_reason(finish)
        return {**({"content": content} if content else {}), **({"tool_calls": entries} if entries else {})}

    def chunk(self, index: int, c: GenerationChunk) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model,
                "choices": [self._choice(index, c.text, c.tokens, c.finish_reason, delta=True,
                                         prompt_logprobs=c.prompt_logprobs, stop_reason=c.stop_reason)]}

    @staticmethod
    def says_nothing(chunk: dict[str, Any]) -> bool:
        """A chat chunk whose delta is empty and which carries nothing else (a "required" tool
        call's tokens before its first name is whole): not sent, as vLLM sends none."""
        c = chunk["choices"][0]
        return c.get("delta") == {} and c["finish_reason"] is None and c["logprobs"] is None and "token_ids" not in c

    @staticmethod
    def running_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        """A streamed chunk's usage (vLLM's ``continuous_usage_stats``): its choice's so far."""
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def usage_chunk(self, u: Usage) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": usage_json(u)}

    def whole(self, choices: list[tuple[str, list[TokenOut], str | None, list[TokenOut] | None]],
              usage: Usage, stop_reasons: list[str | int | None] | None = None) -> dict[str, Any]:
        """``choices``: (text, tokens, finish reason, prompt logprobs or None) of each, by index.
        A chat response's prompt logprobs (vLLM's field) are the conversation's: one list beside the
        choices, as vLLM gives them."""
        out = {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
               "created": self.created, "model": self.model,
               "choices": [self._choice(i, text, tokens, finish, delta=False, prompt_logprobs=plp,
                                        stop_reason=stop_reasons[i] if stop_reasons else None)
                           for i, (text, tokens, finish, plp) in enumerate(choices)],
               "usage": usage_json(usage)}
        if self.chat and self.prompt_logprobs is not None:
            out["prompt_logprobs"] = self._prompt_logprobs(choices[0][3] if choices else None)
        return out


def error_json(exc: BaseException, kind: str) -> dict[str, Any]:
    param = exc.field if isinstance(exc, InvalidRequestError) else None
    return {"error": {"message": str(exc), "type": kind, "param": param, "code": None}}

"""Structured output for a reasoning model, as vLLM's reasoning-aware grammars: the model thinks
freely, then answers under the grammar (a JSON schema, a named or required tool call).

Two pipeline requests make one answer. The first thinks: no grammar, and the thinking's end tag
``</think>`` is a stop string kept in the text. If that tag ended it, the second answers under the
grammar, its prompt the first's prompt and output, whose KV the prefix caches already hold, so
nothing is computed twice; it has the tokens the first left of ``max_tokens``. The client sees one
stream: the thinking, the tag, the answer (gateway.reasoning_parsers tells them apart), one usage.
A thinking that ends otherwise (out of tokens, at one of the request's own stop strings, the
model's end) is the whole answer.

Whether the answer starts in its thinking is read from the prompt's end (``thinks_first``): where
the chat template closed the thinking already (Qwen3 with ``enable_thinking`` off ends the prompt
with an empty ``<think></think>``), the answer is under the grammar from its first token.
"""
from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Callable, Sequence

from engine.request import GenerationChunk, Usage, WorkRequest
from gateway.metrics import RequestTrace
from gateway.reasoning_parsers import END

TAIL_TOKENS = 8  # the prompt's end that is read for a closed thinking


def thinks_first(prompt_ids: Sequence[int], detokenize: Callable[[Sequence[int]], str]) -> bool:
    """Whether an answer to this prompt starts in its thinking: yes unless the prompt ends with
    the closing tag (a template that turned the thinking off, an assistant turn continued after
    its thinking). (A prompt that continues an answer already past its thinking reads as thinking:
    its grammar would never apply; such a request should not ask for a grammar and the reasoning
    parser together.)"""
    return not detokenize(prompt_ids[-TAIL_TOKENS:]).rstrip().endswith(END)


class _Phase:
    """The request's trace as one of its two pipeline requests sees it. The thinking's end is not
    the request's (``finished`` is kept back: the caller finishes the trace); the answer's first
    token is one more output token (the queue, prefill and first-token times were the thinking's)."""

    def __init__(self, trace: RequestTrace, answer: bool) -> None:
        self._trace = trace
        self._answer = answer

    def prefill_sent(self) -> None:
        if not self._answer:
            self._trace.prefill_sent()

    def first_token(self, prompt_tokens: int, cached_tokens: int) -> None:
        if self._answer:
            self._trace.chunk(1)
        else:
            self._trace.first_token(prompt_tokens, cached_tokens)

    def chunk(self, num_tokens: int) -> None:
        self._trace.chunk(num_tokens)

    def finished(self, reason: str) -> None:
        if self._answer:
            self._trace.finished(reason)


Generate = Callable[[WorkRequest, Any], AsyncIterator[GenerationChunk]]  # (a RequestTrace, or a _Phase of one)


async def think_then_answer(generate: Generate, work: WorkRequest, trace: RequestTrace) -> AsyncIterator[GenerationChunk]:
    """``generate(work, trace)``: one pipeline request (GatewayCore._generate)."""
    params = work.params
    thinking = dataclasses.replace(params, structured=None, stop=(*params.stop, END), include_stop_str_in_output=True)
    output: list[int] = []
    last: GenerationChunk | None = None
    first = generate(dataclasses.replace(work, params=thinking), _Phase(trace, answer=False))
    try:
        async for chunk in first:
            output += [t.token_id for t in chunk.tokens]
            if chunk.finish_reason is None:
                yield chunk
            else:
                last = chunk
    finally:
        await first.aclose()  # (a client gone mid-way: the pipeline request ends and frees its KV now)
    assert last is not None
    if last.finish_reason != "stop" or last.stop_reason != END:  # the thinking was the whole answer
        if isinstance(last.stop_reason, str) and not params.include_stop_str_in_output:
            last.text = last.text.removesuffix(last.stop_reason)  # (kept only for the end tag)
        trace.finished(last.finish_reason or "")
        yield last
        return
    left = params.max_tokens - len(output)
    first_usage = last.usage or Usage()
    if left <= 0:  # no room left to answer
        last.finish_reason, last.stop_reason = "length", None
        trace.finished("length")
        yield last
        return
    last.finish_reason, last.usage, last.stop_reason = None, None, None
    yield last
    answer = dataclasses.replace(work, request_id=f"{work.request_id}-answer", prompt_ids=work.prompt_ids + tuple(output),
                                 params=dataclasses.replace(params, max_tokens=left, prompt_logprobs=None))
    second = generate(answer, _Phase(trace, answer=True))
    try:
        async for chunk in second:
            if chunk.finish_reason is not None:
                u = chunk.usage or Usage()
                chunk.usage = Usage(first_usage.prompt_tokens, first_usage.completion_tokens + u.completion_tokens,
                                    first_usage.cached_tokens, first_usage.draft_tokens + u.draft_tokens,
                                    first_usage.accepted_tokens + u.accepted_tokens)
            yield chunk
    finally:
        await second.aclose()

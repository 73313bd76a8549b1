"""The OpenAI streaming wire format, as pure functions: request bodies, SSE lines, chunk folding.

Parsing is defensive: servers differ in which fields they send (``usage`` on the last chunk or not
at all, ``token_ids`` only on some), and a missing field must never crash a benchmark.
"""
from __future__ import annotations

import json
from typing import Any, Final, Literal

from bench.records import Job, RequestRecord, Usage

PromptFormat = Literal["ids", "text"]


class StreamError(ValueError):
    """The server sent something that is not an OpenAI event stream."""


class _Done:
    def __repr__(self) -> str:
        return "[DONE]"


DONE: Final = _Done()


def _common(model: str, max_tokens: int) -> dict[str, Any]:
    # Greedy: temperature 0. include_usage asks for a final chunk carrying the usage block.
    return {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}


def completion_body(job: Job, model: str, prompt_format: PromptFormat) -> dict[str, Any]:
    """``/v1/completions``. Token ids send the exact tokens (chat prompts with their template applied)."""
    if prompt_format == "ids" or job.prompt.text is None:
        prompt: Any = list(job.prompt_ids)
    else:
        prompt = job.prompt.text
    return {**_common(model, job.max_tokens), "prompt": prompt}


def chat_body(job: Job, model: str) -> dict[str, Any]:
    """``/v1/chat/completions``; the server applies the chat template."""
    return {**_common(model, job.max_tokens), "messages": job.prompt.openai_messages()}


def parse_sse_line(line: str) -> dict[str, Any] | _Done | None:
    """One line of the event stream: a chunk, DONE, or None for blank lines, comments and other fields."""
    line = line.strip()
    if not line.startswith("data:"):
        return None  # blank separator, ": keep-alive" comment, "event:"/"id:"/"retry:" fields
    data = line[len("data:"):].strip()
    if data == "[DONE]":
        return DONE
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as e:
        raise StreamError(f"event data is not JSON: {data[:120]!r}") from e
    if not isinstance(chunk, dict):
        raise StreamError(f"event data is not a JSON object: {data[:120]!r}")
    return chunk


def _token_ids(choice: dict[str, Any]) -> list[int] | None:
    ids = choice.get("token_ids")
    if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
        return ids
    return None


def apply_chunk(record: RequestRecord, chunk: dict[str, Any], now: float) -> None:
    """Fold one streamed chunk into ``record``; ``now`` is when it arrived."""
    error = chunk.get("error")
    if error:
        record.error = str(error.get("message", error) if isinstance(error, dict) else error)
        return
    if chunk.get("usage"):
        record.usage = Usage.from_openai(chunk["usage"])
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        piece = choice.get("text") if delta is None else (delta.get("content") if isinstance(delta, dict) else None)
        piece = piece if isinstance(piece, str) else ""
        ids = _token_ids(choice)
        if piece or ids:
            record.chunk_times.append(now)
            record.text += piece
        if ids:
            record.output_ids = (record.output_ids or []) + ids
        if choice.get("finish_reason"):
            record.finish_reason = str(choice["finish_reason"])

"""The OpenAI stream format: SSE lines, chunk folding, request bodies."""
from __future__ import annotations

import pytest

from bench.openai_stream import DONE, StreamError, apply_chunk, chat_body, completion_body, parse_sse_line
from bench.records import Job, Prompt, RequestRecord, Usage


def _record() -> RequestRecord:
    return RequestRecord(job_index=0, prompt_id="p", prompt_tokens=3, send_time=0.0)


def test_sse_lines() -> None:
    assert parse_sse_line('data: {"a": 1}\n') == {"a": 1}
    assert parse_sse_line("data:[DONE]") is DONE
    for ignored in ("", ": keep-alive", "event: message", "id: 3"):
        assert parse_sse_line(ignored) is None
    with pytest.raises(StreamError):
        parse_sse_line("data: {not json")
    with pytest.raises(StreamError):
        parse_sse_line("data: [1, 2]")


def test_completion_chunks_usage_and_finish() -> None:
    r = _record()
    apply_chunk(r, {"choices": [{"index": 0, "text": "def", "finish_reason": None}]}, 1.0)
    apply_chunk(r, {"choices": [{"index": 0, "text": "", "finish_reason": None}]}, 1.5)  # nothing: not a token event
    apply_chunk(r, {"choices": [{"index": 0, "text": " f", "finish_reason": "length"}]}, 2.0)
    apply_chunk(r, {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                             "prompt_tokens_details": {"cached_tokens": 2}}}, 2.1)
    assert (r.text, r.chunk_times, r.finish_reason) == ("def f", [1.0, 2.0], "length")
    assert r.usage == Usage(prompt_tokens=3, completion_tokens=2, cached_tokens=2)
    assert r.output_ids is None and r.ok


def test_chat_chunks_and_token_ids() -> None:
    r = _record()
    apply_chunk(r, {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, 0.5)  # role only
    apply_chunk(r, {"choices": [{"index": 0, "delta": {"content": "Hi"}, "token_ids": [5, 6]}]}, 1.0)
    apply_chunk(r, {"choices": [{"index": 0, "delta": {"content": "!"}, "token_ids": [7], "finish_reason": "stop"}]}, 1.2)
    assert (r.text, r.chunk_times, r.output_ids, r.finish_reason) == ("Hi!", [1.0, 1.2], [5, 6, 7], "stop")
    assert r.output_tokens == 3  # no usage: counted from the token ids


def test_error_event() -> None:
    r = _record()
    apply_chunk(r, {"error": {"message": "out of KV blocks", "code": 429}}, 1.0)
    assert r.error == "out of KV blocks" and not r.ok


def test_request_bodies_ask_for_greedy_streaming_with_usage() -> None:
    job = Job(index=0, prompt=Prompt(id="x", text="def f("), prompt_ids=(1, 2, 3), max_tokens=9)
    body = completion_body(job, "m", "ids")
    assert body["prompt"] == [1, 2, 3] and body["temperature"] == 0 and body["max_tokens"] == 9
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert completion_body(job, "m", "text")["prompt"] == "def f("
    chat = Job(index=1, prompt=Prompt(id="y", messages=(("user", "hi"),)), prompt_ids=(4, 5), max_tokens=3)
    assert chat_body(chat, "m")["messages"] == [{"role": "user", "content": "hi"}]
    assert completion_body(chat, "m", "text")["prompt"] == [4, 5]  # chat as completion: template ids

"""Bad input never breaks the gateway: every field a request may set, given values of every JSON
type and out-of-range numbers, gets a 200 or a 400 (404: a response id not stored) naming a
field, never a 5xx or a dropped connection (found so: 2**40 as max_tokens overflowed the int32 on
the wire, a 500)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from launcher.stack import Stack

VALUES: list[Any] = [None, True, -1, 2**40, -(2**40), 1.5, "x", [], {}, [1, "a"], {"a": 1}, [[1]], [-1]]
SAMPLING = ["model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
            "frequency_penalty", "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "min_tokens",
            "logit_bias", "lookahead", "logprobs", "n", "stream", "stream_options", "response_format", "guided_json",
            "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "allowed_token_ids", "bad_words",
            "priority", "truncate_prompt_tokens", "prompt_logprobs", "include_stop_str_in_output",
            "skip_special_tokens", "return_token_ids", "best_of", "suffix", "functions", "function_call", "tools",
            "tool_choice", "cache_salt", "request_id", "return_tokens_as_token_ids", "prediction", "use_beam_search", "length_penalty",
            "prompt_embeds", "logits_processors", "guided_whitespace_pattern", "structural_tag"]
ENDPOINTS = {
    "/v1/completions": ({"prompt": "Hi", "max_tokens": 2}, [*SAMPLING, "prompt", "echo"]),
    "/v1/chat/completions": ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                             [*SAMPLING, "messages", "top_logprobs", "max_completion_tokens", "chat_template_kwargs",
                              "add_generation_prompt", "continue_final_message", "echo", "documents", "chat_template",
                              "parallel_tool_calls"]),
    "/v1/responses": ({"input": "Hi", "max_output_tokens": 2},
                      ["input", "instructions", "max_output_tokens", "text", "temperature", "top_p", "stream", "tools",
                       "tool_choice", "previous_response_id", "background", "priority", "bad_words", "model",
                       "metadata", "include", "cache_salt", "store", "conversation"]),
}


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_every_field_with_every_kind_of_value(stack: Stack, path: str) -> None:
    base, fields = ENDPOINTS[path]
    # None as max_*: the default length, an answer as long as the model likes, not bad input
    cases = [(field, value) for field in fields for value in VALUES if not (value is None and field.startswith("max_"))]

    def wrong(client: httpx.Client, field: str, value: Any) -> tuple[Any, ...] | None:
        try:
            with client.stream("POST", stack.http_url + path, json={**base, field: value}) as r:
                raw = r.read()
        except httpx.HTTPError as e:  # a dropped connection: the server failed mid-way
            return field, value, repr(e)
        if r.status_code in (400, 404):  # 404: a previous_response_id not stored
            return None if json.loads(raw)["error"].get("param") else (field, value, f"a {r.status_code} naming no field")
        return None if r.status_code == 200 else (field, value, r.status_code, raw[:200])

    # eight at a time over one client (the requests served share the workers' steps)
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=8)) as client, ThreadPoolExecutor(8) as pool:
        found = [w for w in pool.map(lambda case: wrong(client, *case), cases) if w is not None]
    assert not found, found


def test_nan_and_malformed_bodies_are_400(stack: Stack) -> None:
    for raw in (b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "max_tokens": Infinity}', b"[1, 2]",
                b'{"prompt": "x"', b"\xff"):
        r = httpx.post(stack.http_url + "/v1/completions", content=raw, headers={"content-type": "application/json"},
                       timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "body", (raw, r.text)
    for content in ([{"type": "text", "text": 5}], [{"type": "image_url"}]):
        r = httpx.post(stack.http_url + "/v1/chat/completions", timeout=30,
                       json={"messages": [{"role": "user", "content": content}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content", r.text

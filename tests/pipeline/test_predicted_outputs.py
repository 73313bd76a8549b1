"""OpenAI's Predicted Outputs through the whole stack, as the openai SDK sends them: the predicted
text reaches the decode worker's lookahead, whose drafts from it show in usage's accepted
prediction tokens, and the answer is the one the same request gets without a prediction. Each
request has a cache salt of its own, so it drafts from no other's output (they share one answer)."""
from __future__ import annotations

import secrets

import httpx
import openai
import pytest

from launcher.stack import Stack


def _salted(**body: object) -> dict[str, object]:
    return {**body, "cache_salt": secrets.token_hex(8)}

QUESTION = [{"role": "user", "content": "Explain how a bicycle works."}]


def _client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_a_predicted_answer_is_taken_in_drafts_and_changes_nothing(stack: Stack) -> None:
    client = _client(stack)
    ask = dict(model="", messages=QUESTION, max_tokens=96, temperature=0)
    plain = client.chat.completions.create(**ask, extra_body=_salted(ignore_eos=True, lookahead=False))
    answer = plain.choices[0].message.content
    unpredicted = client.chat.completions.create(**ask, extra_body=_salted(ignore_eos=True))
    predicted = client.chat.completions.create(**ask, extra_body=_salted(ignore_eos=True),
                                               prediction={"type": "content", "content": answer})
    assert unpredicted.choices[0].message.content == predicted.choices[0].message.content == answer
    got = predicted.usage.completion_tokens_details.accepted_prediction_tokens
    without = unpredicted.usage.completion_tokens_details.accepted_prediction_tokens
    assert got >= predicted.usage.completion_tokens // 2 and got > without + 10, (got, without)
    # a prediction as text parts, half of it wrong, streamed: the same answer
    half = answer[: len(answer) // 2] + " and then something else entirely."
    stream = client.chat.completions.create(**ask, extra_body=_salted(ignore_eos=True), stream=True, prediction={
        "type": "content", "content": [{"type": "text", "text": half}]})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer


def test_a_completion_takes_a_prediction_too(stack: Stack) -> None:
    body = {"prompt": "The days of the week are", "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    plain = httpx.post(stack.http_url + "/v1/completions", json=_salted(**body, lookahead=False), timeout=120).json()
    text = plain["choices"][0]["text"]
    r = httpx.post(stack.http_url + "/v1/completions", timeout=120,
                   json=_salted(**body, prediction={"type": "content", "content": text}))
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == text
    assert r.json()["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] >= 16


@pytest.mark.parametrize("prediction", [
    "just text", {"type": "content"}, {"type": "other", "content": "x"}, {"type": "content", "content": 5},
    {"type": "content", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    {"type": "content", "content": "word " * 9000},
])
def test_a_bad_prediction_is_a_400_naming_it(stack: Stack, prediction: object) -> None:
    r = httpx.post(stack.http_url + "/v1/chat/completions", timeout=30,
                   json={"messages": QUESTION, "max_tokens": 4, "prediction": prediction})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prediction", r.text

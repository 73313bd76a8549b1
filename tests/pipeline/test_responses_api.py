"""OpenAI's Responses API through the stack, read by the openai SDK: the same answer as the chat
completion it amounts to, whole and streamed as Responses events; stored responses retrieved,
continued and deleted; its errors as 400s naming the field."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from launcher.stack import Stack
from tests.pipeline.gateway_process import Gateway

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)


def test_a_response_is_the_chat_answer(client: openai.OpenAI) -> None:
    """``instructions`` are the system message, ``input`` the conversation (a string, or messages
    with text parts, "developer" as system), ``max_output_tokens`` the limit: greedy, the output
    text equals chat's, and running out of tokens makes the response incomplete."""
    chat = client.chat.completions.create(model=MODEL, max_tokens=24, temperature=0, messages=[
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "What colour is the sky?"}])
    r = client.responses.create(model=MODEL, instructions="Answer in one short sentence.",
                                input="What colour is the sky?", max_output_tokens=24, temperature=0)
    assert r.object == "response" and r.output_text == chat.choices[0].message.content and r.output_text
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    if chat.choices[0].finish_reason == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed" and r.incomplete_details is None

    parts = client.responses.create(model=MODEL, max_output_tokens=24, temperature=0, input=[
        {"role": "developer", "content": "Answer in one short sentence."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What colour is the sky?"}]}])
    assert parts.output_text == r.output_text

    short = client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3, temperature=0)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.usage.output_tokens == 3


def test_streamed_events_build_the_same_response(client: openai.OpenAI) -> None:
    """Responses events in order, numbered from 0: created, in progress, the item and its part
    added, text deltas, then the text, part and item done and the response completed; the deltas
    join to the whole response's text."""
    kw: dict[str, Any] = dict(model=MODEL, input="Name three fruits.", max_output_tokens=20, temperature=0)
    whole = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    last = "response.incomplete" if whole.status == "incomplete" else "response.completed"
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          last]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == events[-4].text == whole.output_text
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens
    with client.responses.stream(**kw) as stream:  # the SDK's own accumulator takes the events
        assert stream.get_final_response().output_text == whole.output_text


def test_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Make up a person.", max_output_tokens=60, temperature=0,
                                text={"format": {"type": "json_schema", "name": "person", "schema": schema}})
    person = json.loads(r.output_text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def test_output_logprobs_are_chats(client: openai.OpenAI) -> None:
    """``include: ["message.output_text.logprobs"]`` with ``top_logprobs``: each output token's
    logprob and alternatives, as chat gives them for the same request, whole and streamed (the
    deltas' together are the done event's); each token's bytes, joined, are the output text."""
    kw: dict[str, Any] = dict(model=MODEL, input="Name a colour.", max_output_tokens=12, temperature=0)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
                                          max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    want = [(c.token, [t.token for t in c.top_logprobs]) for c in chat.choices[0].logprobs.content]
    r = client.responses.create(include=["message.output_text.logprobs"], top_logprobs=2, **kw)
    got = r.output[0].content[0].logprobs
    assert [(g.token, [t.token for t in g.top_logprobs]) for g in got] == want
    # (the same up to float noise: a step's batch need not be the same twice)
    assert all(abs(g.logprob - c.logprob) < 1e-3 for g, c in zip(got, chat.choices[0].logprobs.content))
    assert len(got) == r.usage.output_tokens
    assert bytes(b for g in got for b in g.bytes).decode() == r.output_text
    assert client.responses.create(**kw).output[0].content[0].logprobs == []  # not asked: none
    events = list(client.responses.create(stream=True, include=["message.output_text.logprobs"], top_logprobs=2, **kw))
    deltas = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert [d.token for d in deltas] == [d.token for d in done.logprobs] == [w[0] for w in want]


def test_a_stored_response_is_retrieved_continued_and_deleted(client: openai.OpenAI) -> None:
    """``store`` (on by default): GET returns the response; ``previous_response_id`` continues its
    conversation (its input and answer, not its instructions), the answer equal to the chat
    completion of the whole conversation; DELETE drops it; ``store: false`` keeps nothing."""
    first = client.responses.create(model=MODEL, instructions="Answer in one short sentence.",
                                    input="What colour is the sky?", max_output_tokens=16, temperature=0)
    got = client.responses.retrieve(first.id)
    assert first.store and got.id == first.id and got.output_text == first.output_text
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input="And the grass?",
                                     max_output_tokens=16, temperature=0)
    assert second.previous_response_id == first.id
    chat = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=[
        {"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And the grass?"}])
    assert second.output_text == chat.choices[0].message.content and second.output_text
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    # a chain: the third turn carries both earlier ones, streamed the same as whole
    third = dict(model=MODEL, previous_response_id=second.id, input="And snow?", max_output_tokens=12, temperature=0)
    whole = client.responses.create(**third)
    events = list(client.responses.create(stream=True, **third))
    assert events[-1].response.output_text == whole.output_text
    assert whole.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens
    assert client.responses.retrieve(events[-1].response.id).output_text == whole.output_text  # streamed: stored too
    deleted = httpx.delete(f"{client.base_url}responses/{first.id}", timeout=30)  # (the SDK's delete returns None)
    assert deleted.status_code == 200 and deleted.json() == {"id": first.id, "object": "response.deleted",
                                                             "deleted": True}
    for call in (lambda: client.responses.retrieve(first.id), lambda: client.responses.delete(first.id),
                 lambda: client.responses.create(model=MODEL, previous_response_id=first.id, input="Hi")):
        with pytest.raises(openai.NotFoundError, match="is stored here"):
            call()
    unkept = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    assert not unkept.store
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


@pytest.mark.parametrize("body, field", [
    ({"input": "hi", "previous_response_id": 5}, "previous_response_id"),
    ({"input": "hi", "store": "yes"}, "store"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation"),
    ({"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0]"),
    # the stack's gateway has no tool-call parser: "auto" is vLLM's 400
    ({"input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": "auto"}, "tool_choice"),
    ({"input": "hi", "background": "yes"}, "background"),
    ({"input": "hi", "background": True, "store": False}, "background"),  # (a background response is stored)
    ({"input": []}, "input"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}}, "text"),
    ({"input": "hi", "model": "gpt-4"}, "model"),  # (a 404, as vLLM answers a model it does not serve)
    ({"input": "hi", "include": ["reasoning.encrypted_content"]}, "include"),
    ({"input": "hi", "include": "message.output_text.logprobs"}, "include"),
    ({"input": "hi", "top_logprobs": 21}, "top_logprobs"),
])
def test_bad_requests_get_400_naming_the_field(stack: Stack, body: dict, field: str) -> None:
    r = httpx.post(stack.http_url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == (404 if field == "model" else 400), r.text
    assert r.json()["error"]["param"] == field, r.text


def test_truncation_auto_keeps_the_end_of_a_conversation_too_long_for_the_context(stack: Stack,
                                                                                  tmp_path: Path) -> None:
    # a gateway of a 1,024-token context over the stack's workers (the workers' own, ~5,600 tokens,
    # took half a minute to prefill on one thread)
    gw = Gateway(stack, tmp_path, "--max-model-len", "1024")
    try:
        client = openai.OpenAI(base_url=gw.http_url + "/v1", api_key="none", timeout=120)
        context = httpx.get(gw.http_url + "/v1/models", timeout=10).json()["data"][0]["max_model_len"]
        assert context == 1024
        long = "word " * (context + 100)
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=MODEL, input=long, max_output_tokens=2)
        r = client.responses.create(model=MODEL, input=long, max_output_tokens=2, truncation="auto")
        assert r.truncation == "auto" and r.usage.input_tokens == context - 2
        with pytest.raises(openai.BadRequestError, match="truncation"):
            client.responses.create(model=MODEL, input="Hi", truncation="middle")  # type: ignore[arg-type]
    finally:
        gw.stop()


def test_input_items_list_the_requests_input(client: openai.OpenAI) -> None:
    """``GET /v1/responses/{id}/input_items`` (the SDK's ``responses.input_items.list``): the
    request's input items, each with an id, the last first by default, a page at a time."""
    r = client.responses.create(model=MODEL, instructions="Be brief.", max_output_tokens=4, temperature=0, input=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}])
    page = client.responses.input_items.list(r.id)
    assert [it.role for it in page.data] == ["user", "assistant", "user"] and not page.has_more
    assert page.data[0].content[0].text == "Name a colour." and page.data[2].content[0].text == "Hi"
    assert page.data[1].content[0].type == "output_text" and len({it.id for it in page.data}) == 3
    first = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [it.id for it in first.data] == [page.data[2].id, page.data[1].id] and first.has_more
    rest = client.responses.input_items.list(r.id, order="asc", after=first.data[-1].id)
    assert [it.id for it in rest.data] == [page.data[0].id] and not rest.has_more
    assert [it.id for it in client.responses.input_items.list(r.id, order="asc", limit=1)] == \
        [it.id for it in page.data[::-1]]  # the SDK's pages, followed
    one = client.responses.create(model=MODEL, input="Hello", max_output_tokens=2)
    (only,) = client.responses.input_items.list(one.id).data
    assert only.role == "user" and only.content[0].text == "Hello" and only.id.startswith("msg_")
    for query, field in (("limit=0", "limit"), ("order=up", "order"), ("after=nope", "after")):
        bad = httpx.get(f"{client.base_url}responses/{r.id}/input_items?{query}", timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field, bad.text
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_nothing")

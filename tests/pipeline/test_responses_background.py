"""Background responses (the Responses API's ``background: true``) through the stack, read by the
openai SDK: answered at once, queued; made by the gateway whatever the client does; retrieved as
they go; streamed again from any event; cancelled, their KV freed in every process."""
from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from launcher.stack import Stack
from launcher.stack_probe import wait_idle

MODEL = "SmolLM2-135M-Instruct"
ASK: dict[str, Any] = dict(model=MODEL, instructions="Answer in one short sentence.", input="What colour is the sky?",
                           max_output_tokens=24, temperature=0)
LONG: dict[str, Any] = dict(model=MODEL, input="Count with me: one, two,", max_output_tokens=2000, temperature=0,
                            extra_body={"ignore_eos": True})  # runs far longer than the test waits


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)


def _until(client: openai.OpenAI, response_id: str, statuses: tuple[str, ...], timeout_s: float = 120.0) -> Any:
    """Polls the response until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.responses.retrieve(response_id)
        if r.status in statuses or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


FINISHED = ("completed", "incomplete", "failed", "cancelled")


def test_a_background_response_is_queued_then_completes_as_the_same_answer(client: openai.OpenAI) -> None:
    """Answered at once, queued and empty; retrieved once done, its text and usage those of the
    same request answered in the foreground; continued by ``previous_response_id`` like any stored one."""
    fg = client.responses.create(**ASK)
    bg = client.responses.create(background=True, **ASK)
    assert bg.background and not fg.background
    assert bg.status == "queued" and bg.output == [] and bg.usage is None
    done = _until(client, bg.id, FINISHED)
    assert done.status == fg.status and done.output_text == fg.output_text and done.output_text
    assert done.usage.output_tokens == fg.usage.output_tokens and done.error is None
    assert client.responses.retrieve(bg.id).output_text == fg.output_text  # (stored: the same once done)
    after = client.responses.create(model=MODEL, previous_response_id=bg.id, input="And the grass?",
                                    max_output_tokens=8, temperature=0)
    assert after.status in ("completed", "incomplete") and after.usage.input_tokens > fg.usage.input_tokens


def test_a_background_stream_is_picked_up_where_it_was_left(stack: Stack, client: openai.OpenAI) -> None:
    """Streamed: created (queued), queued, in progress, the foreground's events, completed,
    numbered from 0. ``GET ?stream=true&starting_after=k`` replays the events after k; a client
    that left its stream after a few events finds the response went on without it."""
    fg = client.responses.create(**ASK)
    events = list(client.responses.create(background=True, stream=True, **ASK))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].response.status == events[1].response.status == "queued"
    assert events[2].response.status == "in_progress"
    assert events[-1].type == "response.completed" and events[-1].response.output_text == fg.output_text
    rid = events[0].response.id
    assert [e.to_dict() for e in client.responses.retrieve(rid, stream=True)] == [e.to_dict() for e in events]
    replay = list(client.responses.retrieve(rid, stream=True, starting_after=4))
    assert [e.to_dict() for e in replay] == [e.to_dict() for e in events[5:]]

    with httpx.stream("POST", stack.http_url + "/v1/responses", json={**ASK, "background": True, "stream": True},
                      timeout=60) as r:  # left after its first three events
        lines = [line for _, line in zip(range(3 * 3), r.iter_lines())]  # (each event: event:, data:, blank)
    seen = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [e["sequence_number"] for e in seen] == [0, 1, 2]
    rest = list(client.responses.retrieve(seen[0]["response"]["id"], stream=True, starting_after=2))
    assert rest[0].sequence_number == 3 and rest[-1].type == "response.completed"
    assert "".join(e.delta for e in rest if e.type == "response.output_text.delta") == fg.output_text


def test_cancelling_a_background_response_stops_it_and_frees_its_kv(stack: Stack, client: openai.OpenAI) -> None:
    """Cancelled in progress: cancelled, and again (idempotent); its requests ended in every
    process. Not continued (only a completed response is stored). Deleting a running one cancels
    it too. A foreground response cannot be cancelled; an unknown one is a 404."""
    wait_idle(stack)
    bg = client.responses.create(background=True, **LONG)
    assert _until(client, bg.id, ("in_progress", *FINISHED)).status == "in_progress"
    deadline = time.monotonic() + 60  # retrieved as it goes: its text so far
    while not (partial := client.responses.retrieve(bg.id)).output_text:
        assert time.monotonic() < deadline and partial.status == "in_progress", partial.status
        time.sleep(0.1)
    assert partial.status == "in_progress" and partial.output[0].status == "in_progress"
    cancelled = client.responses.cancel(bg.id)
    assert cancelled.id == bg.id and cancelled.status == "cancelled"
    assert cancelled.output_text.startswith(partial.output_text) and cancelled.output[0].status == "incomplete"
    assert client.responses.cancel(bg.id).status == "cancelled" == client.responses.retrieve(bg.id).status
    snap = wait_idle(stack, timeout_s=10)
    assert all(v == (0, 0, 0) for v in snap.values()), snap
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, previous_response_id=bg.id, input="Go on.", max_output_tokens=2)

    running = client.responses.create(background=True, **LONG)
    assert _until(client, running.id, ("in_progress", *FINISHED)).status == "in_progress"
    (item,) = client.responses.input_items.list(running.id).data  # (listed while it runs)
    assert item.content[0].text == LONG["input"]
    with pytest.raises(openai.BadRequestError, match="still in_progress"):  # not yet continued
        client.responses.create(model=MODEL, previous_response_id=running.id, input="Go on.", max_output_tokens=2)
    deleted = httpx.delete(f"{client.base_url}responses/{running.id}", timeout=30)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(running.id)
    snap = wait_idle(stack, timeout_s=10)
    assert all(v == (0, 0, 0) for v in snap.values()), snap

    fg = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="synchronous"):
        client.responses.cancel(fg.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nothing")


def test_a_background_response_that_fails_says_why(client: openai.OpenAI) -> None:
    """What fails after the response was answered (here: a schema whose grammar does not compile,
    found by the prefill worker) ends it failed, with the error; its stream ends with the error
    and ``response.failed``."""
    body: dict[str, Any] = dict(ASK, text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}})
    with pytest.raises(openai.BadRequestError, match="does not compile"):  # (in the foreground: a 400)
        client.responses.create(**body)
    bg = client.responses.create(background=True, **body)
    failed = _until(client, bg.id, FINISHED)
    assert failed.status == "failed" and failed.error.code == "invalid_prompt"
    assert "does not compile" in failed.error.message
    events = list(client.responses.retrieve(bg.id, stream=True))
    assert [e.type for e in events] == ["response.created", "response.queued", "error", "response.failed"]


@pytest.mark.parametrize("query, field", [("stream=maybe", "stream"), ("stream=true&starting_after=x", "starting_after")])
def test_bad_retrieve_queries_get_400_naming_the_field(stack: Stack, client: openai.OpenAI, query: str,
                                                       field: str) -> None:
    bg = client.responses.create(background=True, **dict(ASK, max_output_tokens=2))
    r = httpx.get(f"{stack.http_url}/v1/responses/{bg.id}?{query}", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    fg = client.responses.create(**dict(ASK, max_output_tokens=2))
    r = httpx.get(f"{stack.http_url}/v1/responses/{fg.id}?stream=true", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream", r.text

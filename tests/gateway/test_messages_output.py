"""An Anthropic Message built from an answer: thinking, text and tool_use blocks in the answer's
order, streamed as events the anthropic SDK accumulates into the same message; and a Messages
request read as chat's."""
from __future__ import annotations

import random
from typing import Any

import pytest
from anthropic._models import construct_type
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent

from engine.errors import InvalidRequestError
from engine.request import Usage
from gateway.messages_api import as_chat_body
from gateway.messages_output import MessageObject
from gateway.tools import ToolPlan

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = "I need the weather.</think>Let me check.\n" + CALL


def _pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(1, 12)))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("seed", range(6))
def test_blocks_in_order_whole_and_streamed(seed: int) -> None:
    def run(pieces: list[str]) -> tuple[MessageObject, list[dict[str, Any]]]:
        obj = MessageObject("req-abc", "m", 12, tools=ToolPlan("auto", None, None, "hermes"), reasoning="deepseek_r1")
        events = obj.opening()
        for k, p in enumerate(pieces):
            last = k == len(pieces) - 1
            events += obj.add(p, "stop" if last else None, Usage(12, 30, cached_tokens=8) if last else None)
        return obj, events + obj.closing()

    whole, _ = run([ANSWER])
    m = whole.json()
    assert [b["type"] for b in m["content"]] == ["thinking", "text", "tool_use"]
    assert m["content"][0]["thinking"] == "I need the weather." and m["content"][1]["text"] == "Let me check."
    assert m["content"][2]["input"] == {"city": "Paris"} and m["content"][2]["id"].startswith("toolu_")
    assert m["stop_reason"] == "tool_use" and m["usage"]["input_tokens"] == 4 and m["usage"]["cache_read_input_tokens"] == 8
    obj, events = run(_pieces(ANSWER, random.Random(seed)))
    assert [b["type"] for b in obj.json()["content"]] == ["thinking", "text", "tool_use"]
    assert [e["type"] for e in events if e["type"].startswith("content_block_s")] == \
           ["content_block_start", "content_block_stop"] * 3
    assert [e["index"] for e in events if e["type"] == "content_block_start"] == [0, 1, 2]
    snapshot = None
    bufs: dict[int, bytes] = {}  # (each tool call's input JSON so far, by block: the SDK keeps them for a stream)
    for e in events:  # the SDK's own accumulator, on the events read as the SDK reads a stream
        snapshot = accumulate_event(event=construct_type(type_=RawMessageStreamEvent, value=e), current_snapshot=snapshot,
                                    json_bufs=bufs)
    assert snapshot is not None and snapshot.stop_reason == "tool_use"
    assert [b.type for b in snapshot.content] == ["thinking", "text", "tool_use"]
    assert snapshot.content[2].input == {"city": "Paris"} and snapshot.content[1].text == "Let me check."


def test_a_cut_answer_runs_out_of_tokens() -> None:
    obj = MessageObject("req-x", "m", 5)
    obj.add("Hello", "length", Usage(5, 3))
    m = obj.json()
    assert m["stop_reason"] == "max_tokens" and m["content"] == [{"type": "text", "text": "Hello"}]


def test_a_request_as_chat() -> None:
    chat = as_chat_body({
        "model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["\n\n"],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"},
        "thinking": {"type": "disabled"}, "metadata": {"user_id": "u"},
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                              {"type": "text", "text": "Calling."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                                         {"type": "text", "text": "Thanks"}]}]})
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Calling.", "reasoning_content": "hmm", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
        {"role": "user", "content": "Thanks"}]
    assert chat["stop"] == ["\n\n"] and chat["tool_choice"] == "required" and chat["max_tokens"] == 9
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat["chat_template_kwargs"] == {"enable_thinking": False}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = as_chat_body({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert fmt["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    with pytest.raises(InvalidRequestError) as e:
        as_chat_body({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "frequency_penalty": 1})
    assert e.value.field == "frequency_penalty"


def test_an_answer_stopped_by_a_pause_is_a_paused_turn() -> None:
    """A pause in mode abort (gateway.admission) stops the answer: Anthropic's ``pause_turn``, the
    turn to send back to go on."""
    obj = MessageObject("req-y", "m", 5)
    obj.add("Hel", "abort", Usage(5, 1))
    m = obj.json()
    assert m["stop_reason"] == "pause_turn" and m["content"] == [{"type": "text", "text": "Hel"}]

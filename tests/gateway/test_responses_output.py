"""A Responses answer with tools: its items (a message for text, a function_call per call) in the
order the answer makes them, streamed as events the openai SDK reads, whole as the same items."""
from __future__ import annotations

import random
from typing import Any

import pytest
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from engine.request import Usage
from gateway.responses_output import ResponseObject
from gateway.tools import ToolPlan

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = "Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Rome") + "\nDone."


def _pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(1, 12)))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


def _run(plan: ToolPlan, pieces: list[str], finish: str = "stop") -> tuple[ResponseObject, list[dict[str, Any]]]:
    obj = ResponseObject("req-abc", "m", {"input": "x", "tools": [{"type": "function", "name": "get_weather"}]},
                         tools=plan)
    events = obj.opening()
    for k, p in enumerate(pieces):
        last = k == len(pieces) - 1
        events += obj.add(p, finish if last else None, Usage(3, 9) if last else None)
    return obj, events + obj.closing()


def _items(response: dict[str, Any]) -> list[tuple[str, ...]]:
    return [(it["type"], it["content"][0]["text"]) if it["type"] == "message" else (it["type"], it["name"], it["arguments"])
            for it in response["output"]]


@pytest.mark.parametrize("seed", range(8))
def test_auto_calls_and_text_become_items_streamed_or_whole(seed: int) -> None:
    plan = ToolPlan("auto", None, None, "hermes")
    whole, _ = _run(plan, [ANSWER])
    expected = [("message", "Let me check."), ("function_call", "get_weather", '{"city": "Paris"}'),
                ("function_call", "get_weather", '{"city": "Rome"}'), ("message", "\nDone.")]
    assert _items(whole.json()) == expected
    obj, events = _run(plan, _pieces(ANSWER, random.Random(seed)))
    assert _items(obj.json()) == expected and obj.json()["status"] == "completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # every item added, then done, in output order, each before the next one is added
    opened = [(e["type"], e["output_index"]) for e in events if e["type"].startswith("response.output_item.")]
    assert opened == [(f"response.output_item.{s}", k) for k in range(4) for s in ("added", "done")]
    ids = [it["id"] for it in obj.json()["output"]]
    assert len(set(ids)) == 4 and ids[0] == "msg_abc"
    # the SDK's own accumulator builds the same response from the events
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    # (read as the SDK reads a stream: constructed, not validated strictly)
    handled = [h for e in events for h in state.handle_event(construct_type(type_=ResponseStreamEvent, value=e))]
    final = handled[-1].response  # type: ignore[union-attr]
    assert handled[-1].type == "response.completed" and isinstance(final, Response)
    assert final.output_text == "Let me check.\nDone."
    assert [(c.name, c.arguments) for c in final.output if c.type == "function_call"] == \
           [(n, a) for _, n, a in expected[1:3]]  # type: ignore[misc]


def test_the_answer_as_a_chat_turn_and_a_cut_call() -> None:
    obj, _ = _run(ToolPlan("auto", None, None, "hermes"), [ANSWER])
    turn = obj.answer()
    assert turn["content"] == "Let me check.\nDone."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in turn["tool_calls"]] == \
           [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]
    # a required call cut by max_output_tokens: the response and its open item are incomplete
    cut, events = _run(ToolPlan("required", None, None), ['[{"name": "get_weather", "parameters": {"ci'], "length")
    out = cut.json()
    assert out["status"] == "incomplete" and [it["status"] for it in out["output"]] == ["incomplete"]
    assert out["output"][0]["arguments"] == '{"ci' and events[-1]["type"] == "response.incomplete"


@pytest.mark.parametrize("seed", range(4))
def test_thinking_is_a_reasoning_item_before_the_answers_items(seed: int) -> None:
    answer = "I need the weather.</think>" + ANSWER
    obj = ResponseObject("req-abc", "m", {"input": "x"}, tools=ToolPlan("auto", None, None, "hermes"),
                         reasoning="deepseek_r1")
    events = obj.opening()
    cut = _pieces(answer, random.Random(seed))
    for k, p in enumerate(cut):
        events += obj.add(p, "stop" if k == len(cut) - 1 else None, Usage(3, 9) if k == len(cut) - 1 else None)
    events += obj.closing()
    out = obj.json()["output"]
    assert [it["type"] for it in out] == ["reasoning", "message", "function_call", "function_call", "message"]
    assert out[0]["content"] == [{"type": "reasoning_text", "text": "I need the weather."}] and out[0]["id"] == "rs_abc"
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"]
    assert "".join(deltas) == "I need the weather." and all(e["output_index"] == 0 for e in events
                                                             if e["type"].startswith("response.reasoning_text."))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    handled = [h for e in events for h in state.handle_event(construct_type(type_=ResponseStreamEvent, value=e))]
    final = handled[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "reasoning" and final.output[0].content[0].text == "I need the weather."
    assert final.output_text == "Let me check.\nDone."
    assert obj.answer()["reasoning_content"] == "I need the weather."


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("abort", "abort")])
def test_an_answer_cut_short_is_incomplete_and_says_why(finish: str, reason: str) -> None:
    """Out of tokens, or stopped by a pause in mode abort (gateway.admission): the response, its
    message and its last event say incomplete, with the reason."""
    obj = ResponseObject("req-cut", "m", {"input": "x"})
    events = obj.opening() + obj.add("Hello", finish, Usage(3, 1)) + obj.closing()
    out = obj.json()
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": reason}
    assert out["output"][0]["status"] == "incomplete" and out["output"][0]["content"][0]["text"] == "Hello"
    assert events[-1]["type"] == "response.incomplete"

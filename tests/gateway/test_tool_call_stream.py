"""tool_choice "required" streamed: each call's id and name once its name is whole, then its
arguments as they come, however the answer's text is cut into chunks; the arguments are the
parameters as the model wrote them, streamed or whole."""
from __future__ import annotations

import json
import random
from typing import Any

import pytest

from gateway.openai_response import ResponseShaper
from gateway.tools import RequiredCalls, tool_plan

ANSWERS = [
    '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}]',
    '[\n\n{\n  "name": "get_weather",\n  "parameters": {\n    "city": "Paris"\n  }\n}\n]',
    '[{"name":"a","parameters":{}},{"name":"b","parameters":{"x":[1,{"y":"}]{"}],"q":"say \\"hi\\" \\\\"}}]',
    '[ {"name": "caf\\u00e9", "parameters": {"n": -1.5e3, "ok": true, "none": null}} , '
    '{"name": "b", "parameters": {"s": "[,:{"}} ]',
    # parameters that are not objects (a tool's schema may be any JSON schema)
    '[{"name": "n", "parameters": 42}, {"name": "s", "parameters": "a, b}"}, {"name": "t", "parameters": true} ]',
    # an escaped quote alone, then what reads like a call inside the string
    '[{"name":"a","parameters":{"q":"1\\" }, {\\"name\\": \\"x"}},{"name":"b","parameters":{"n":2}}]',
]


def _split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


def _calls(pieces: list[str]) -> list[tuple[str, str]]:
    scanner, calls = RequiredCalls(), []
    for piece in pieces:
        for kind, s in scanner.feed(piece):
            if kind == "call":
                calls.append((s, ""))
            else:
                calls[-1] = (calls[-1][0], calls[-1][1] + s)
    assert scanner.count == len(calls)
    return calls


@pytest.mark.parametrize("answer", ANSWERS)
def test_every_cut_of_the_text_gives_the_same_calls(answer: str) -> None:
    value = json.loads(answer)
    whole = _calls([answer])
    assert [name for name, _ in whole] == [item["name"] for item in value]
    assert [json.loads(args) for _, args in whole] == [item["parameters"] for item in value]
    assert all(args in answer for _, args in whole)  # as written, not re-serialized
    rng = random.Random(answer)
    for _ in range(50):
        assert _calls(_split(answer, rng)) == whole
    assert _calls(list(answer)) == whole  # a character at a time


def test_a_call_is_announced_once_its_name_is_whole() -> None:
    scanner = RequiredCalls()
    assert scanner.feed('[{"name": "get_wea') == []
    assert scanner.feed('ther", "parameters": {"ci') == [("call", "get_weather"), ("args", '{"ci')]
    assert scanner.feed('ty": "Paris"}}') == [("args", 'ty": "Paris"}')]
    assert scanner.feed(']') == []


def _shaper(tokenizer: Any) -> ResponseShaper:
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("a", "b")]
    plan = tool_plan({"tools": tools, "tool_choice": "required"})
    return ResponseShaper("r", "m", chat=True, tokenizer=tokenizer, logprobs=None, return_token_ids=False, tools=plan)


def test_the_stream_sends_each_call_as_it_is_written_and_ends_as_the_whole_answer(tokenizer: Any) -> None:
    answer = ANSWERS[2]
    whole = _shaper(tokenizer)._choice(0, answer, [], "stop", delta=False)
    assert whole["finish_reason"] == "tool_calls"
    want = [(c["function"]["name"], c["function"]["arguments"]) for c in whole["message"]["tool_calls"]]
    pieces = _split(answer, random.Random(3))
    shaper = _shaper(tokenizer)
    deltas = [shaper._choice(0, p, [], "stop" if i == len(pieces) - 1 else None, delta=True)
              for i, p in enumerate(pieces)]
    entries = [e for d in deltas for e in d["delta"].get("tool_calls", [])]
    got: dict[int, list[str]] = {}
    for e in entries:
        if "id" in e:  # a call's first entry: id, type and name, once
            assert e["index"] == len(got) and e["type"] == "function"
            got[e["index"]] = [e["function"]["name"], e["function"]["arguments"]]
        else:
            got[e["index"]][1] += e["function"]["arguments"]
    assert [tuple(v) for v in got.values()] == want
    assert sum(bool(d["delta"].get("tool_calls")) for d in deltas) > 1  # not all at the end
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert not any("content" in d["delta"] for d in deltas)


def test_an_answer_cut_before_a_call_is_named_ends_as_text(tokenizer: Any) -> None:
    shaper = _shaper(tokenizer)
    assert shaper._choice(0, '[{"na', [], None, delta=True)["delta"] == {"role": "assistant"}
    last = shaper._choice(0, 'me": "a', [], "length", delta=True)
    assert last["delta"] == {"content": '[{"name": "a'} and last["finish_reason"] == "length"


def test_parallel_tool_calls_false_allows_one_call_only() -> None:
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("a", "b")]
    many = json.loads(tool_plan({"tools": tools, "tool_choice": "required"}).structured.spec)
    one = json.loads(tool_plan({"tools": tools, "tool_choice": "required", "parallel_tool_calls": False}).structured.spec)
    assert "maxItems" not in many and one["maxItems"] == 1 and one["minItems"] == 1

"""tool_choice "auto" with Hermes's format: the text and the calls read out of an answer, and a
streamed answer gives what the whole one gives however its text is cut into chunks."""
from __future__ import annotations

import json
import random
from typing import Any

import pytest

from engine.errors import InvalidRequestError
from engine.request import GenerationChunk, Usage
from engine.sampling_params import SamplingParams
from gateway.openai_protocol import chat_messages
from gateway.openai_response import ResponseShaper
from gateway.tool_parsers import PARSERS, Call, HermesParser, MistralParser
from gateway.tagged_tool_parsers import Qwen3CoderParser
from gateway.tool_pieces import CallArgs, CallStart, Piece, calls_of
from gateway.tools import ToolPlan, tool_plan

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
CALLED = Call("get_weather", '{"city": "Paris", "unit": "celsius"}')

# (answer, its content, its calls' names and arguments)
CASES: list[tuple[str, str, list[Call]]] = [
    ("Hello there.\n", "Hello there.\n", []),  # no call: the text as written
    (CALL, "", [Call("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ("Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Rome") + "\n", "Let me check.",
     [Call("get_weather", '{"city": "Paris", "unit": "celsius"}'), Call("get_weather", '{"city": "Rome", "unit": "celsius"}')]),
    (CALL + "\nIt is sunny.", "\nIt is sunny.", [Call("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    # not a call: the block stays text, tags and all
    ("<tool_call>\nnot json\n</tool_call> ok", "<tool_call>\nnot json\n</tool_call> ok", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    # an open last block that holds a whole call is a call (cut before its end tag); one that does not is text
    ('<tool_call>\n{"name": "a", "arguments": {"x": "<tool_call>"}}', "", [Call("a", '{"x": "<tool_call>"}')]),
    ('<tool_call>\n{"name": "a", "argum', '<tool_call>\n{"name": "a", "argum', []),
    ("x <tool_c", "x <tool_c", []),  # a tag's first characters, never finished
    # "parameters" (Llama's word) for the arguments; non-ASCII kept as it is
    ('<tool_call>{"name": "b", "parameters": {"q": "café"}}</tool_call>', "", [Call("b", '{"q": "café"}')]),
    ('<tool_call>{"name": "c"}</tool_call>', "", [Call("c", "{}")]),
]


def _pieces(text: str, rng: random.Random) -> list[str]:
    if len(text) < 2:
        return [text]
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 10))))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


def _joined(pieces: list[Piece]) -> tuple[str, list[Call]]:
    return calls_of(pieces)


F = Call("f", '{"x": 1}')
LLAMA3_CASES: list[tuple[str, str, list[Call]]] = [
    ('{"name": "f", "parameters": {"x": 1}}', "", [F]),
    ('<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "g", "arguments": {}}', "", [F, Call("g", "{}")]),
    ('\n {"name": "f", "parameters": {"x": 1}}\n', "", [F]),
    ("Hello {x}\n", "Hello {x}\n", []),  # text: the answer does not begin with a call
    ("\n\nIt is {sunny}.", "\n\nIt is {sunny}.", []),
    ('{"a": 1} tail', '{"a": 1} tail', []),  # JSON that is not a call
    ('{"name": "f", "parameters": {"x": 1}}; {"b": 2}', '{"b": 2}', [F]),
    ('{"name": "f", "parameters": {"x"', "", [Call("f", '{"x"')]),  # cut: begun, so a call as far as written
    ('{"parameters": {"x": 1}, "name"', '{"parameters": {"x": 1}, "name"', []),  # cut, of a shape read whole: text
    ('{"parameters": {"x": 1}, "name": "f"}; {"name": "g", "arguments": {"y": "}"}}', "",
     [F, Call("g", '{"y": "}"}')]),  # the name after the arguments: whole; then one begun
]


SCHEMAS = {"get_weather": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "hot": {"type": "boolean"}, "scale": {"type": "number"},
    "where": {"type": "object"}, "tags": {"type": ["array", "null"]}}}}
QCALL = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
QWEN3_CODER_CASES: list[tuple[str, str, list[Call]]] = [
    (QCALL, "", [Call("get_weather", '{"city": "Paris"}')]),
    ("Checking.\n" + QCALL + "\n" + QCALL.replace("Paris", "San Francisco, CA"), "Checking.",
     [Call("get_weather", '{"city": "Paris"}'), Call("get_weather", '{"city": "San Francisco, CA"}')]),
    # values typed by the tool's schema; text where they do not read as their type
    ("<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</parameter>\n<parameter=hot>\nTrue\n</parameter>\n"
     "<parameter=scale>\n1.5\n</parameter>\n<parameter=where>\n{\"lat\": 1}\n</parameter>\n"
     "<parameter=tags>\nnull\n</parameter>\n<parameter=city>\n42\n</parameter>\n<parameter=other>\nx\n</parameter>\n"
     "</function>\n</tool_call>", "",
     [Call("get_weather", '{"days": 3, "hot": true, "scale": 1.5, "where": {"lat": 1}, "tags": null, "city": "42", '
                          '"other": "x"}')]),
    ("<tool_call>\n<function=get_weather>\n<parameter=days>\nthree\n</parameter>\n</function>\n</tool_call>", "",
     [Call("get_weather", '{"days": "three"}')]),
    # a value over several lines keeps its inner newlines; an open last block holding a call is one
    ("<tool_call>\n<function=f>\n<parameter=code>\ndef f():\n    return 1\n</parameter>\n</function>", "",
     [Call("f", '{"code": "def f():\\n    return 1"}')]),
    ("<tool_call>\nnot a function\n</tool_call>", "<tool_call>\nnot a function\n</tool_call>", []),
    ("plain text only\n", "plain text only\n", []),
]


MISTRAL_CASES: list[tuple[str, str, list[Call]]] = [
    ('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]', "", [F, Call("g", "{}")]),
    ('Let me call it.\n[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}]', "Let me call it.", [F]),
    ('[TOOL_CALLS]f[ARGS]{"x": 1}[TOOL_CALLS]g[ARGS]{}', "", [F, Call("g", "{}")]),  # tokenizers v11 on
    ("Just text, [no calls].\n", "Just text, [no calls].\n", []),
    ('[TOOL_CALLS] [{"nope": 1}]', '[TOOL_CALLS] [{"nope": 1}]', []),  # not calls: as written
    ('[TOOL_CALLS]f[ARGS]{"x": 1} and then some', "and then some", [F]),
    ('[TOOL_CALLS] [{"name": "f", "arguments": {"x"', "", [Call("f", '{"x"')]),  # cut: begun, a call as far as written
    ('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}, "id": "a]"}] Done.', "Done.", [F]),
    ('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"a": 1}] then', '{"a": 1}] then', [F]),  # a non-call: text
    ('[TOOL_CALLS]f[ARGS]{"x": "[TOOL_CALLS]"}', "", [Call("f", '{"x": "[TOOL_CALLS]"}')]),
]


PYTHONIC_CASES: list[tuple[str, str, list[Call]]] = [
    ('[f(x=1), g()]', "", [F, Call("g", "{}")]),
    ('<|python_start|>[get_weather(city="Paris", days=[1, 2], hot=True, none=None)]<|python_end|>', "",
     [Call("get_weather", '{"city": "Paris", "days": [1, 2], "hot": true, "none": null}')]),
    ("It is [sunny] today.", "It is [sunny] today.", []),  # text: the answer does not begin with a list
    ("[1, 2, 3]", "[1, 2, 3]", []),  # a list, but not of calls
    ("[f(x=open('/etc/passwd'))]", "[f(x=open('/etc/passwd'))]", []),  # not a literal: never evaluated
    ("[f(1)]", "[f(1)]", []),  # positional arguments have no names
    ("[f(x=1)] and more", "[f(x=1)] and more", []),  # something after the list
    ("[f(x=1", "[f(x=1", []),  # cut
]


@pytest.mark.parametrize("name,answer,content,calls", [("hermes", *c) for c in CASES] +
                         [("pythonic", *c) for c in PYTHONIC_CASES] +
                         [("mistral", *c) for c in MISTRAL_CASES] +
                         [("llama3_json", *c) for c in LLAMA3_CASES] +
                         [("qwen3_coder", *c) for c in QWEN3_CODER_CASES])
def test_parser_streamed_or_whole(name: str, answer: str, content: str, calls: list[Call]) -> None:
    rng = random.Random(0)
    for cut in [[answer], list(answer), *(_pieces(answer, rng) for _ in range(30))]:
        parser = PARSERS[name](SCHEMAS)
        pieces = [p for piece in cut for p in parser.feed(piece)] + parser.finish()
        assert _joined(pieces) == (content, calls), cut


def test_llama3_text_streams_as_it_comes() -> None:
    parser = PARSERS["llama3_json"]({})
    assert parser.feed("  ") == [] and parser.feed("The") == ["  The"] and parser.feed(" sky") == [" sky"]
    calls = PARSERS["llama3_json"]({})
    assert calls.feed('<|python_tag|>{"name": "f", ') == []
    assert calls.feed('"parameters": {"x": ') == [CallStart("f"), CallArgs('{"x": ')]  # a call as it is written
    assert calls.feed('1}};') == [CallArgs("1}")]


def test_text_goes_out_before_the_answer_ends_and_in_order() -> None:
    """Text streams as it comes; only a tag's possible start and trailing whitespace wait; text
    and calls keep the answer's order."""
    parser = HermesParser({})
    assert parser.feed("Sure, ") == ["Sure,"]
    assert parser.feed("I will check.\n<tool") == [" I will check."]
    assert parser.feed("_call>\n{") == []
    assert parser.feed('"name": "f", "arguments": {}}\n</tool_call>\nDone') == [CallStart("f"), CallArgs("{}"), "\nDone"]
    assert parser.finish() == []
    whole = HermesParser({})
    assert calls_of(whole.feed("A" + CALL + "B" + CALL) + whole.finish()) == ("AB", [CALLED, CALLED])


def _as_fed(parser: Any, pieces: list[str]) -> list[list[Piece]]:
    return [parser.feed(p) for p in pieces] + [parser.finish()]


def test_hermes_streams_a_calls_arguments_as_they_are_written() -> None:
    """Begun once its name and the arguments' opening brace have come; each piece of the object
    goes out as it comes, the braces in strings not counted, up to the object's end (the call's
    closing brace and the end tag are not arguments)."""
    out = _as_fed(HermesParser({}), ['<tool_call>\n{"name": "write", "argu', 'ments": {"path": "a.py", ',
                                     '"text": "def f(): {', ' return 1 }\\"}"}', '}\n</tool_', 'call>'])
    assert out == [[], [CallStart("write"), CallArgs('{"path": "a.py", ')], [CallArgs('"text": "def f(): {')],
                   [CallArgs(' return 1 }\\"}"}')], [], [], []]
    args = "".join(p.text for ps in out for p in ps if isinstance(p, CallArgs))
    assert json.loads(args) == {"path": "a.py", "text": 'def f(): { return 1 }"}'}  # (an escaped quote)


def test_mistral_streams_a_calls_arguments_as_they_are_written() -> None:
    """Both of Mistral's shapes: begun once the name and the arguments' ``{`` have come."""
    v11 = _as_fed(MistralParser({}), ["Sure.[TOOL_CALLS]wri", 'te[ARGS]{"text": "ab', 'c"}[TOOL_C', "ALLS]g[ARGS]{}"])
    assert v11 == [["Sure."], [CallStart("write"), CallArgs('{"text": "ab')], [CallArgs('c"}')],
                   [CallStart("g"), CallArgs("{}")], []]
    listed = _as_fed(MistralParser({}), ['[TOOL_CALLS][{"name": "f", "arguments": {"x', '": 1}}, {"name": "g", ',
                                         '"arguments": {}}]'])
    assert listed == [[CallStart("f"), CallArgs('{"x')], [CallArgs('": 1}')], [CallStart("g"), CallArgs("{}")], []]


def test_qwen3_coder_streams_text_values_and_reads_typed_ones_whole() -> None:
    """A text value streams as it is written (JSON-escaped; the newline after its tag and the one
    before its end are not its text); ``null``, or what may still become it, and a typed value
    wait for their end."""
    out = _as_fed(Qwen3CoderParser(SCHEMAS), [
        "<tool_call>\n<function=get_weather>\n<parameter=days>\n3", "\n</parameter>\n<parameter=city>\nNu",
        'l"l\n', "Paris\n</param", "eter>\n<parameter=tags>\nnull\n</parameter>\n</function>\n</tool_call>"])
    assert out == [[CallStart("get_weather")], [CallArgs('{"days": 3')], [CallArgs(', "city": "Nul\\"l')],
                   [CallArgs("\\nParis")], [CallArgs('", "tags": null}')], []]


def test_mistrals_tag_is_a_special_token_kept_in_the_text() -> None:
    """A request that may call keeps special tokens in its text for the parser (vLLM's rule), and
    only then; a named call is structured output, and not beside another grammar."""
    body: dict[str, Any] = {"tools": [WEATHER]}
    params = SamplingParams(max_tokens=8)
    assert tool_plan(body, "mistral").sampling(params).skip_special_tokens is False  # type: ignore[union-attr]
    assert tool_plan(body, "hermes").sampling(params).skip_special_tokens is True  # type: ignore[union-attr]
    named = tool_plan({**body, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "mistral")
    assert named is not None and named.sampling(params).structured == named.structured
    with pytest.raises(InvalidRequestError, match="structured output already"):
        named.sampling(SamplingParams(max_tokens=8, structured=named.structured))


def test_plan_of_tool_choice() -> None:
    """ "auto" needs the server's parser (vLLM's 400 without it); with one, tools and no
    tool_choice mean "auto" (vLLM's default); without one they mean "none"."""
    body: dict[str, Any] = {"tools": [WEATHER]}
    assert tool_plan(body, None) is None
    plan = tool_plan(body, "hermes")
    assert plan is not None and plan.mode == "auto" and plan.structured is None and not plan.single
    assert plan.schemas == {"get_weather": {"type": "object"}}  # (a parser may type values by them)
    with pytest.raises(InvalidRequestError, match="--enable-auto-tool-choice") as e:
        tool_plan({**body, "tool_choice": "auto"}, None)
    assert e.value.field == "tool_choice"
    with pytest.raises(InvalidRequestError, match="needs tools"):
        tool_plan({"tool_choice": "auto"}, "hermes")
    assert tool_plan({**body, "tool_choice": "none"}, "hermes") is None
    assert tool_plan({**body, "parallel_tool_calls": False}, "hermes").single  # type: ignore[union-attr]
    named = tool_plan({**body, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "hermes")
    assert named is not None and named.mode == "named"


def _stream(plan: ToolPlan, pieces: list[str], finish: str) -> list[dict[str, Any]]:
    shaper = ResponseShaper("r", "m", True, None, None, False, tools=plan)
    return [shaper.chunk(0, GenerationChunk(p, [], finish if k == len(pieces) - 1 else None))["choices"][0]
            for k, p in enumerate(pieces)]


def _assembled(streamed: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Streamed entries as calls, as OpenAI's clients join them: a call's first entry (a new index,
    in order) has its id, type and name; the next ones of its index more of its arguments."""
    calls: list[tuple[str, str]] = []
    for tc in streamed:
        if tc["index"] == len(calls):
            assert tc["id"].startswith("chatcmpl-tool-") and tc["type"] == "function", tc
            calls.append((tc["function"]["name"], tc["function"]["arguments"]))
        else:
            assert tc["index"] == len(calls) - 1 and set(tc) == {"index", "function"} and set(tc["function"]) == {
                "arguments"}, tc
            calls[-1] = (calls[-1][0], calls[-1][1] + tc["function"]["arguments"])
    return calls


@pytest.mark.parametrize("answer,content,calls", CASES)
def test_a_streamed_answer_says_what_the_whole_one_says(answer: str, content: str, calls: list[Call]) -> None:
    plan = ToolPlan("auto", None, None, "hermes")
    shaper = ResponseShaper("r", "m", True, None, None, False, tools=plan)
    whole = shaper.whole([(answer, [], "stop", None)], Usage(1, 1))["choices"][0]
    message = whole["message"]
    assert message["content"] == (content or None if calls else content)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []] == calls
    assert whole["finish_reason"] == ("tool_calls" if calls else "stop")
    for cut in (_pieces(answer, random.Random(seed)) for seed in range(10)):
        chunks = _stream(plan, cut, "stop")
        deltas = [c["delta"] for c in chunks]
        streamed = [tc for d in deltas for tc in d.get("tool_calls", [])]
        assert "".join(d.get("content", "") for d in deltas) == (message["content"] or "")
        assert _assembled(streamed) == [tuple(c) for c in calls]
        assert [c["finish_reason"] for c in chunks] == [None] * (len(cut) - 1) + [whole["finish_reason"]]


def test_a_cut_answer_and_parallel_calls_off() -> None:
    """A call that made it before max_tokens cut the answer keeps "length"; with
    parallel_tool_calls false only the first call goes out, streamed or whole."""
    plan = ToolPlan("auto", None, None, "hermes")
    chunks = _stream(plan, [CALL, "\n<tool_call>\n{"], "length")
    assert chunks[-1]["finish_reason"] == "length" and chunks[-1]["delta"]["content"] == "\n<tool_call>\n{"
    single = ToolPlan("auto", None, None, "hermes", single=True)
    two = CALL + "\n" + CALL.replace("Paris", "Rome")
    content, calls = single.answer(two)
    assert content is None and calls is not None and [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris"]
    streamed = [tc for c in _stream(single, [CALL, "\n" + CALL.replace("Paris", "Rome")], "stop")
                for tc in c["delta"].get("tool_calls", [])]
    assert [tc["index"] for tc in streamed] == [0]


def test_a_tool_calling_turn_reaches_the_template_with_its_arguments_as_an_object() -> None:
    """OpenAI's API carries a call's arguments as a JSON string; templates write them with tojson."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    msgs = chat_messages({"messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]})
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert call["function"]["arguments"] == '{"city": "Paris"}'  # the request's own is left as it was
    bad = {**call, "function": {"name": "f", "arguments": "{nope"}}
    with pytest.raises(InvalidRequestError) as e:
        chat_messages({"messages": [{"role": "assistant", "content": None, "tool_calls": [bad]}]})
    assert e.value.field == "messages[0].tool_calls"

"""tool_choice "auto" through the official openai client: a gateway started with vLLM's
``--enable-auto-tool-choice --tool-call-parser hermes`` and a chat template that renders tools in
Hermes's format, in front of the stack's workers.

The bundled model was not trained to call tools, so a grammar (vLLM's ``guided_regex``) makes it
write Hermes's tags while it picks the values itself. The same request with ``tool_choice:
"none"`` gives the raw text, which the calls and the text around them must account for exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from launcher.stack import Stack
from tests.pipeline.gateway_process import Gateway

# Qwen2.5's tools section and calls, on the bundled model's ChatML turns
TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\nYou may call functions. Their signatures are within <tools></tools>:\n<tools>' }}
    {%- for t in tools %}{{ '\n' + (t | tojson) }}{% endfor %}
    {{- '\n</tools>\nFor each call, return {"name": <function-name>, "arguments": <args-json-object>} '
        'within <tool_call></tool_call> tags.<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
    {%- if m.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + m.role + '\n' + m.content }}
        {%- for c in m.tool_calls or [] %}
            {{- '\n<tool_call>\n{"name": "' + c.function.name + '", "arguments": ' + (c.function.arguments | tojson) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]
ONE_CALL = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome|London)", "unit": "(celsius|fahrenheit)"\}\}\n</tool_call>'
TEXT_AND_CALLS = r"(Sure|Let me check)\.\n" + ONE_CALL + r"\n" + ONE_CALL


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("tool-gateway")
    (home / "tools.jinja").write_text(TEMPLATE)
    gw = Gateway(stack, home, "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                 "--chat-template", str(home / "tools.jinja"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", timeout=120)


def _kw(regex: str | None, **more: Any) -> dict[str, Any]:
    return dict(model="SmolLM2-135M-Instruct", messages=ASK, tools=[WEATHER], max_tokens=120, temperature=0,
                extra_body={"guided_regex": regex} if regex else None, **more)


def _raw(client: openai.OpenAI, regex: str | None) -> str:
    """The answer's text as the model wrote it: tools rendered, nothing parsed."""
    text = client.chat.completions.create(tool_choice="none", **_kw(regex)).choices[0].message.content
    assert text is not None
    return text


def _calls(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """The calls in the raw text, read with json by hand (not by the parser under test)."""
    blocks = raw.split("<tool_call>\n")[1:]
    return [(c["name"], c["arguments"]) for c in (json.loads(b.split("\n</tool_call>")[0]) for b in blocks)]


def test_auto_reads_the_models_calls_and_its_text(client: openai.OpenAI) -> None:
    raw = _raw(client, TEXT_AND_CALLS)
    expected = _calls(raw)
    assert len(expected) == 2 and all(args["city"] in ("Paris", "Rome", "London") for _, args in expected)
    got = client.chat.completions.create(tool_choice="auto", **_kw(TEXT_AND_CALLS)).choices[0]
    assert got.message.content == raw.split("\n")[0] and got.finish_reason == "tool_calls"
    calls = got.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == expected
    assert len({c.id for c in calls}) == 2 and all(c.type == "function" for c in calls)
    # streamed: the text as it comes, each call as it is written: its first entry has its id and
    # name, the next ones more of its arguments (lookahead off: one token a step, so the pieces are
    # the tokens; with it on, the second call's arguments, a copy of the first's, can come whole)
    streamed_kw = _kw(TEXT_AND_CALLS)
    streamed_kw["extra_body"]["lookahead"] = False
    chunks = [c.choices[0] for c in client.chat.completions.create(tool_choice="auto", stream=True, **streamed_kw)
              if c.choices]
    assert "".join(c.delta.content or "" for c in chunks) == got.message.content
    streamed = [tc for c in chunks for tc in c.delta.tool_calls or []]
    firsts = [tc for tc in streamed if tc.id is not None]
    assert [(tc.index, tc.function.name) for tc in firsts] == [(k, c.function.name) for k, c in enumerate(calls)]
    assert all(tc.function.name is None for tc in streamed if tc.id is None)
    assert ["".join(tc.function.arguments for tc in streamed if tc.index == k) for k in range(len(calls))] == \
           [c.function.arguments for c in calls]
    assert len(streamed) > 2 * len(calls)  # (the arguments came in pieces, token by token)
    assert chunks[-1].finish_reason == "tool_calls"
    # parallel_tool_calls false: the first call only
    one = client.chat.completions.create(tool_choice="auto", parallel_tool_calls=False, **_kw(TEXT_AND_CALLS))
    assert [(c.function.name, json.loads(c.function.arguments)) for c in one.choices[0].message.tool_calls or []] == expected[:1]


def test_tools_without_tool_choice_are_auto_and_a_text_answer_stays_text(client: openai.OpenAI) -> None:
    """vLLM's default where tools are given; the free answer (no grammar) has no tags here."""
    raw = _raw(client, None)
    assert "<tool_call>" not in raw
    got = client.chat.completions.create(**_kw(None)).choices[0]
    assert got.message.content == raw and not got.message.tool_calls and got.finish_reason in ("stop", "length")
    called = client.chat.completions.create(**_kw(ONE_CALL)).choices[0]  # no tool_choice: "auto" reads calls
    assert called.message.content is None and called.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in called.message.tool_calls or []] == \
           _calls(_raw(client, ONE_CALL))


def test_the_call_and_the_tools_answer_go_back_to_the_model(client: openai.OpenAI, gateway: Gateway) -> None:
    """The next turn renders the call with its arguments as an object (as the model wrote them), not
    as a quoted string, and the tool's answer; the model answers in text."""
    call = client.chat.completions.create(**_kw(ONE_CALL)).choices[0].message.tool_calls[0]  # type: ignore[index]
    turn2 = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                   {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'}]
    r = httpx.post(gateway.http_url + "/tokenize", json={"messages": turn2, "tools": [WEATHER]}, timeout=30)
    assert r.status_code == 200, r.text
    prompt = httpx.post(gateway.http_url + "/detokenize", json={"tokens": r.json()["tokens"]}, timeout=30).json()["prompt"]
    written = '<tool_call>\n{"name": "get_weather", "arguments": ' + json.dumps(json.loads(call.function.arguments)) + "}"
    assert written in prompt and '<tool_response>\n{"temperature": 18}' in prompt
    answer = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=turn2, tools=[WEATHER],
                                            max_tokens=24, temperature=0).choices[0]
    assert answer.message.content and not answer.message.tool_calls


def test_auto_without_a_parser_is_a_400_naming_the_flags(stack: Stack) -> None:
    r = httpx.post(stack.http_url + "/v1/chat/completions",
                   json={"messages": ASK, "tools": [WEATHER], "tool_choice": "auto"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    assert "--enable-auto-tool-choice" in r.json()["error"]["message"]


def test_the_flag_needs_a_parser(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="needs --tool-call-parser"):
        Gateway(stack, tmp_path, "--enable-auto-tool-choice")


# ---- the Responses API: function tools, calls as output items, their outputs as input items ----
RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}  # flat here


def test_responses_function_calls_whole_and_streamed(client: openai.OpenAI) -> None:
    """A required call through the Responses API is a function_call item with chat's arguments;
    streamed, its events build the same response (the SDK's own accumulator reads them)."""
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", input=ASK[0]["content"], tools=[RESPONSES_WEATHER],
                              tool_choice="required", max_output_tokens=120, temperature=0)
    chat = client.chat.completions.create(**{**_kw(None), "tool_choice": "required"}).choices[0].message
    r = client.responses.create(**kw)
    calls = [it for it in r.output if it.type == "function_call"]
    assert r.status == "completed" and len(calls) == len(chat.tool_calls or []) >= 1
    assert [(c.name, c.arguments) for c in calls] == [(c.function.name, c.function.arguments) for c in chat.tool_calls or []]
    assert all(c.status == "completed" and c.call_id.startswith("chatcmpl-tool-") for c in calls)
    assert r.tools[0].name == "get_weather" and r.tool_choice == "required"
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert [(c.name, c.arguments) for c in final.output] == [(c.name, c.arguments) for c in calls]
    with client.responses.stream(**kw) as stream:
        assert [(c.name, c.arguments) for c in stream.get_final_response().output] == [(c.name, c.arguments) for c in calls]


def test_responses_a_function_calls_output_goes_back_to_the_model(client: openai.OpenAI) -> None:
    """The call's output, sent after the response that made it (``previous_response_id``) or with
    the call in ``input``, is the tool's answer in chat's terms: the same answer as the chat
    completion of that conversation."""
    named = {"type": "function", "name": "get_weather"}
    first = client.responses.create(model="SmolLM2-135M-Instruct", input=ASK[0]["content"], tools=[RESPONSES_WEATHER],
                                    tool_choice=named, max_output_tokens=60, temperature=0)
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments)
    output = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 18}'}
    kw: dict[str, Any] = dict(model="SmolLM2-135M-Instruct", tools=[RESPONSES_WEATHER], max_output_tokens=24,
                              temperature=0, tool_choice="none")
    continued = client.responses.create(previous_response_id=first.id, input=[output], **kw)
    given = client.responses.create(input=[{"role": "user", "content": ASK[0]["content"]},
                                           {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                            "arguments": call.arguments}, output], **kw)
    chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", tools=[WEATHER], max_tokens=24, temperature=0,
                                          messages=ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"temperature": 18}'}])
    assert continued.output_text == given.output_text == chat.choices[0].message.content and continued.output_text
    assert continued.usage.input_tokens == given.usage.input_tokens == chat.usage.prompt_tokens
    for bad, field in (({"tools": [{"type": "web_search"}]}, "tools[0]"),
                       ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
                       ({"tool_choice": {"type": "mcp"}}, "tool_choice"),
                       ({"tool_choice": "required", "include": ["message.output_text.logprobs"]}, "include")):
        body = {"model": "SmolLM2-135M-Instruct", "input": "hi", "tools": [RESPONSES_WEATHER], **bad}
        r = httpx.post(str(client.base_url) + "responses", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text

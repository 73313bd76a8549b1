"""Reasoning parsers: the thinking and the answer told apart, streamed or whole alike however the
text is cut, and as chat's message and deltas carry them."""
from __future__ import annotations

import random
from typing import Any

import pytest

from engine.errors import InvalidRequestError
from engine.request import GenerationChunk, Usage
from gateway.openai_protocol import chat_template_options
from gateway.openai_response import ResponseShaper
from gateway.reasoning_parsers import reasoning_parser
from gateway.responses_api import as_chat_body
from gateway.tools import ToolPlan

# (parser, answer, thinking, content)
CASES = [
    ("deepseek_r1", "<think>2 plus 2 is 4.</think>4", "2 plus 2 is 4.", "4"),
    ("deepseek_r1", "\n2 plus 2 is 4.\n</think>\n\nIt is 4.", "\n2 plus 2 is 4.\n", "\n\nIt is 4."),  # <think> in the prompt
    ("deepseek_r1", "still thinking when cut", "still thinking when cut", ""),
    ("deepseek_r1", "a < b </thin", "a < b </thin", ""),  # a tag never finished is text
    ("deepseek_r1", "<think></think>x", "", "x"),
    ("qwen3", "<think>\nhmm\n</think>\n\nHello", "\nhmm\n", "\n\nHello"),
    ("qwen3", "Hello <think>not at the start</think>", "", "Hello <think>not at the start</think>"),  # thinking off
    ("qwen3", "\n<think>a</think>b", "a", "b"),
    ("qwen3", "<thi", "", "<thi"),
    ("qwen3", "<think>cut", "cut", ""),
]


def _pieces(text: str, rng: random.Random) -> list[str]:
    if len(text) < 2:
        return [text]
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 10))))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("name,answer,thinking,content", CASES)
def test_thinking_and_answer_streamed_or_whole(name: str, answer: str, thinking: str, content: str) -> None:
    rng = random.Random(0)
    for cut in [[answer], list(answer), *(_pieces(answer, rng) for _ in range(30))]:
        parser = reasoning_parser(name)
        got = [parser.feed(p, final=k == len(cut) - 1) for k, p in enumerate(cut)]
        assert ("".join(t for t, _ in got), "".join(c for _, c in got)) == (thinking, content), cut


def test_thinking_streams_as_it_comes() -> None:
    parser = reasoning_parser("deepseek_r1")
    assert parser.feed("<thi") == ("", "")
    assert parser.feed("nk>Let me") == ("Let me", "")
    assert parser.feed(" see.</th") == (" see.", "")
    assert parser.feed("ink>Yes") == ("", "Yes")


@pytest.mark.parametrize("name,answer,thinking,content", CASES)
def test_chat_message_and_deltas(name: str, answer: str, thinking: str, content: str) -> None:
    """The message's ``reasoning`` (and ``reasoning_content``) and ``content``; the deltas join to them."""
    whole = ResponseShaper("r", "m", True, None, None, False, reasoning=name).whole(
        [(answer, [], "stop", None)], Usage(1, 1))["choices"][0]["message"]
    answer_text = content if content or not thinking else None  # all thinking: no answer
    assert (whole["reasoning"], whole["reasoning_content"], whole["content"]) == (thinking or None, thinking or None, answer_text)
    for seed in range(5):
        shaper = ResponseShaper("r", "m", True, None, None, False, reasoning=name)
        cut = _pieces(answer, random.Random(seed))
        deltas = [shaper.chunk(0, GenerationChunk(p, [], "stop" if k == len(cut) - 1 else None))["choices"][0]["delta"]
                  for k, p in enumerate(cut)]
        assert "".join(d.get("reasoning", "") for d in deltas) == thinking
        assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
        assert "".join(d.get("content", "") for d in deltas) == content


def test_calls_are_read_from_the_answer_after_the_thinking() -> None:
    call = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    shaper = ResponseShaper("r", "m", True, None, None, False, tools=ToolPlan("auto", None, None, "hermes"),
                            reasoning="deepseek_r1")
    choice = shaper.whole([("I need f.</think>\n\n" + call, [], "stop", None)], Usage(1, 1))["choices"][0]
    message = choice["message"]
    assert message["reasoning"] == "I need f." and message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["f"] and choice["finish_reason"] == "tool_calls"


def test_include_reasoning_false_tells_the_thinking_apart_but_leaves_it_out() -> None:
    shaper = ResponseShaper("r", "m", True, None, None, False, reasoning="deepseek_r1", show_reasoning=False)
    message = shaper.whole([("hmm</think>Yes", [], "stop", None)], Usage(1, 1))["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Yes"}
    stream = ResponseShaper("r", "m", True, None, None, False, reasoning="deepseek_r1", show_reasoning=False)
    deltas = [stream.chunk(0, GenerationChunk(p, [], f))["choices"][0]["delta"]
              for p, f in (("hm", None), ("m</think>Y", None), ("es", "stop"))]
    assert [d.get("content") for d in deltas] == [None, "Y", "es"] and not any("reasoning" in d for d in deltas)


def test_reasoning_effort_reaches_the_template() -> None:
    body = {"messages": [], "reasoning_effort": "low", "chat_template_kwargs": {"x": 1}}
    assert chat_template_options(body)["template_kwargs"] == {"reasoning_effort": "low", "x": 1}
    with pytest.raises(InvalidRequestError) as e:
        chat_template_options({"reasoning_effort": "extreme"})
    assert e.value.field == "reasoning_effort"
    chat = as_chat_body({"input": "hi", "reasoning": {"effort": "high"}})  # the Responses API's
    assert chat_template_options(chat)["template_kwargs"] == {"reasoning_effort": "high"}


def test_an_answer_thinks_first_unless_the_prompt_closed_the_thinking(tokenizer: Any) -> None:
    """gateway.reasoned: R1's template opens <think>; Qwen3's with thinking off ends with an empty
    <think></think>; earlier turns' closed thinking does not count."""
    from gateway.reasoned import thinks_first

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    assert thinks_first(ids("<|im_start|>assistant\n<think>\n"), tokenizer.decode)
    assert thinks_first(ids("<think>a</think>7<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"),
                        tokenizer.decode)
    assert not thinks_first(ids("<|im_start|>assistant\n<think>\n\n</think>\n\n"), tokenizer.decode)

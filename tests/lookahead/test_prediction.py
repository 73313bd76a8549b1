"""OpenAI's Predicted Outputs: a request's ``prediction`` is a draft source of its own. On the
drafter (hand-built token streams) and on the real model: with the answer predicted, lookahead
takes most of it in drafts; right, wrong or half-right, the output is what plain decoding gives."""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from engine.engine_config import EngineConfig
from engine.errors import InvalidRequestError
from engine.llm_engine import LLMEngine
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template


def test_the_prediction_drafts_what_no_other_text_has() -> None:
    d = Drafter(DrafterConfig())
    prompt = [5, 6, 7, 8]
    d.observe("plain", prompt, len(prompt))
    d.observe("predicted", prompt, len(prompt), prediction=[7, 8, 40, 41, 42, 43, 44])
    assert d.match("plain", prompt) is None and not len(d.propose("plain", prompt, 8, 8))
    m = d.match("predicted", prompt)
    assert (m.source, m.key_length) == ("prediction", 2)
    assert d.propose("predicted", prompt, 8, 8).tokens == [40, 41, 42, 43, 44]
    # as the output goes on along the prediction, it keeps drafting from it
    text = [*prompt, 40, 41]
    d.observe("predicted", text, len(prompt))
    assert d.propose("predicted", text, 8, 8).tokens == [42, 43, 44]


def test_a_longer_key_wins_and_the_prediction_wins_ties() -> None:
    d = Drafter(DrafterConfig())
    prompt = [1, 2, 3, 9, 9, 2, 3, 70, 71, 1, 2, 3]  # the own text continues (2, 3) and (1, 2, 3)
    d.observe("r", prompt, len(prompt), prediction=[2, 3, 80, 81, 82])  # the prediction only (2, 3)
    m = d.match("r", prompt)
    assert (m.source, m.key_length) == ("own", 3)
    assert d.propose("r", prompt, 4, 4).tokens[:2] == [9, 9]
    d.observe("tie", prompt, len(prompt), prediction=[1, 2, 3, 80, 81, 82])
    assert d.match("tie", prompt).source == "prediction"
    tree = d.propose("tie", prompt, 8, 3)
    assert tree.tokens[:tree.first_branch()] == [80, 81, 82]
    assert 9 in tree.tokens  # the own text's branch after it, from its longest key
    d.forget("tie")
    assert "tie" not in d.local


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=256, max_num_seqs=8))


def _run(eng: LLMEngine, prompt: list[int], params: SamplingParams) -> tuple[list[int], int, int]:
    """(output ids, draft tokens, accepted draft tokens) of one request. Each under a cache salt of
    its own: it drafts from no other request's output (all of them have the same answer)."""
    seq = eng.add_request(f"p-{id(params)}", prompt, params, cache_salt=secrets.token_hex(8))
    while eng.has_work:
        eng.step()
    return list(seq.output_ids), seq.num_draft_tokens, seq.num_accepted_tokens


def test_a_predicted_answer_is_drafted_and_the_output_stays_the_models(engine: LLMEngine) -> None:
    prompt = apply_chat_template(engine.tokenizer, [{"role": "user", "content": "Tell me a short story about a cat."}])
    greedy = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    answer, _, _ = _run(engine, prompt, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True, lookahead=False))
    assert not set(answer[:8]) <= set(prompt)  # the answer is not a copy of the prompt
    out, _, unpredicted = _run(engine, prompt, greedy)
    assert out == answer
    out, drafted, accepted = _run(engine, prompt, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True,
                                                                 prediction=tuple(answer)))
    assert out == answer
    assert accepted >= len(answer) // 2 and accepted > unpredicted + 10, (accepted, unpredicted, drafted)
    # a prediction wrong from its middle on: what follows the change is the model's, not the prediction's
    wrong = tuple(answer[:20]) + tuple(t + 1 for t in answer[20:])
    out, _, _ = _run(engine, prompt, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True, prediction=wrong))
    assert out == answer


def test_a_prediction_outside_the_vocabulary_is_refused(engine: LLMEngine) -> None:
    vocab = engine.model.config.vocab_size
    with pytest.raises(InvalidRequestError, match="prediction"):
        engine.add_request("bad", [1, 2, 3], SamplingParams(prediction=(1, vocab)))
    with pytest.raises(InvalidRequestError, match="prediction"):
        SamplingParams(prediction=(-1,))

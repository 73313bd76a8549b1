"""Lookahead never changes what the model produces: greedy tokens, the sampling distribution, KV."""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from scipy.stats import chi2_contingency

import engine.lookahead.speculator as speculator_mod
from engine.lookahead.budget import FreeWideSteps
from engine.lookahead.tree import DraftTree
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.structured import StructuredSpec
from engine.tokenizer import apply_chat_template, bad_word_ids
from kernels import cpu_linear
from tests.prompts import code_edit_ids, engine_prompts

REPEAT_PROMPT = "1, 2, 3, 1, 2, 3,"
N_SAMPLES = 2000


@pytest.fixture(scope="module")
def la_engine(model_dir: Path) -> LLMEngine:
    # bf16 where Grove's product kernel runs (the serving dtype there): exactness in bf16 rests on
    # row-invariant products and attention (fp32 is checked against transformers in
    # tests/pipeline), and its wide steps cost little (these tests draft as wide as they can:
    # 2.6x faster than fp32 on an Intel Xeon with AMX)
    dtype = "bfloat16" if cpu_linear.available() else "auto"
    return LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, num_kv_blocks=1024, max_num_seqs=256,
                                  max_num_batched_tokens=2048))


@pytest.fixture()
def drafting_engine(la_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMEngine]:
    """The same engine told that wide steps are free, so it drafts whatever it can: these tests
    are about verification, not about the budget (at batch 128 the real cost model drafts little).
    Every request the plan leaves out is probed, as if no source's rates were known yet (a step's
    draft nodes are capped, and 256 requests' 3 tokens at temperature 1 leave many out)."""
    spec = la_engine.speculator
    saved = spec.cost, spec.max_step_tokens
    spec.cost, spec.max_step_tokens = FreeWideSteps(), 1024
    monkeypatch.setattr(speculator_mod, "PROBES_PER_SOURCE", 10**9)
    yield la_engine
    spec.cost, spec.max_step_tokens = saved


def _first_three(eng: LLMEngine, lookahead: bool, seed0: int, n: int = N_SAMPLES) -> Counter[tuple[int, ...]]:
    ids = eng.tokenizer(REPEAT_PROMPT)["input_ids"]
    params = [SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True, seed=seed0 + i, lookahead=lookahead)
              for i in range(n)]
    outs = eng.generate([ids] * N_SAMPLES, params)
    return Counter(tuple(o.output_ids) for o in outs)


def _chi2_p(a: Counter, b: Counter) -> float:
    keys = [k for k, _ in (a + b).most_common() if a[k] + b[k] >= 10]
    table = [[a[k] for k in keys] + [sum(a.values()) - sum(a[k] for k in keys)],
             [b[k] for k in keys] + [sum(b.values()) - sum(b[k] for k in keys)]]
    if table[0][-1] + table[1][-1] == 0:
        table = [row[:-1] for row in table]
    return float(chi2_contingency(table)[1])


def test_sampling_distribution_is_kept(drafting_engine: LLMEngine) -> None:
    eng = drafting_engine
    before = eng.speculator.stats.num_accepted_tokens
    off = _first_three(eng, False, 0)
    on = _first_three(eng, True, 10**6)  # other seeds: independent samples
    assert eng.speculator.stats.num_accepted_tokens > before + 400, "lookahead barely drafted: test is void"
    p = _chi2_p(off, on)
    assert p > 0.01, f"chi-square p = {p:.4g}: lookahead changed the distribution"


def test_a_lossy_verifier_is_caught(drafting_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Break verification on purpose (accept the first draft branch blindly): the test above must fail."""
    honest: Callable[..., Any] = speculator_mod.accept_path

    def lossy(parents: list[int], tokens: list[int], sampled: list[int]) -> tuple[list[int], list[int]]:
        path, out = [0], []
        node = 0
        while True:
            kids = [i for i in range(1, len(tokens)) if parents[i] == node]
            if not kids:
                out.append(sampled[node])
                return path, out
            node = kids[0]
            path.append(node)
            out.append(tokens[node])

    monkeypatch.setattr(speculator_mod, "accept_path", lossy)
    off = _first_three(drafting_engine, False, 0, 300)
    on = _first_three(drafting_engine, True, 10**6, 300)
    monkeypatch.setattr(speculator_mod, "accept_path", honest)
    assert _chi2_p(off, on) < 0.01


def test_greedy_on_equals_off(la_engine: LLMEngine, tokenizer: Any) -> None:
    prompts = code_edit_ids(tokenizer, 4) + engine_prompts(tokenizer, 4, 4)
    on = la_engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=48, lookahead=True))
    off = la_engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=48, lookahead=False))
    assert [o.output_ids for o in on] == [o.output_ids for o in off]


def test_no_block_leak_after_500_requests(drafting_engine: LLMEngine) -> None:
    eng = drafting_engine
    before = eng.speculator.stats.num_drafts
    texts = [f"{i}, {i + 1}, {i + 2}, {i}, {i + 1}, {i + 2}, {i}," for i in range(50)]
    prompts = [eng.tokenizer(t)["input_ids"] for t in texts] * 10
    params = [SamplingParams(temperature=0.0 if i % 2 else 0.8, max_tokens=12, lookahead=True, seed=i)
              for i in range(len(prompts))]
    eng.generate(prompts, params)
    assert eng.speculator.stats.num_drafts > before + 500
    eng.allocator.check_integrity()
    assert eng.allocator.num_used == 0 and not eng.has_work
    assert eng.speculator.drafter.local == {} and eng.speculator.acceptance.requests == {}


def test_counting_is_drafted_by_numbering_and_changes_no_token(drafting_engine: LLMEngine) -> None:
    """The bundled model continuing "101\\n102\\n...": drafts of the next numbers
    (engine.lookahead.numbering) are taken where the tries alone guess little, and greedy output
    stays that of plain decoding."""
    drafter, stats = drafting_engine.speculator.drafter, drafting_engine.speculator.stats
    digits = drafter.digits
    assert digits is not None
    accepted = {}
    try:
        for start, numbering in ((101, False), (201, True)):
            drafter.digits = digits if numbering else None
            ids = drafting_engine.tokenizer("".join(f"{i}\n" for i in range(start, start + 8)))["input_ids"]
            before = stats.num_accepted_tokens
            on = drafting_engine.generate([ids], SamplingParams(temperature=0.0, max_tokens=64))[0]
            accepted[numbering] = stats.num_accepted_tokens - before
            off = drafting_engine.generate([ids], SamplingParams(temperature=0.0, max_tokens=64, lookahead=False))[0]
            assert on.output_ids == off.output_ids
            assert drafting_engine.tokenizer.decode(on.output_ids).startswith(f"{start + 8}\n{start + 9}\n")
    finally:
        drafter.digits = digits
    # measured (wide steps free): 51 of 64 tokens with numbering, 28 without
    assert accepted[True] >= 40 and accepted[True] >= 1.5 * accepted[False], accepted


def test_logit_bias_and_min_tokens_keep_on_equal_off(drafting_engine: LLMEngine, tokenizer: Any) -> None:
    """Rows of a drafted tree get the request's bias, and min_tokens' bans by their own position:
    greedy output with drafts equals plain decoding's, and both options change the output."""
    eng = drafting_engine
    prompts = code_edit_ids(tokenizer, 3)
    plain = [o.output_ids for o in eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40))]
    common = Counter(t for out in plain for t in out).most_common(1)[0][0]
    biased = SamplingParams(temperature=0.0, max_tokens=40, logit_bias=((common, -4.0),))
    before = eng.speculator.stats.num_accepted_tokens
    on = [o.output_ids for o in eng.generate(prompts, biased)]
    assert eng.speculator.stats.num_accepted_tokens > before  # drafts were verified under the bias
    off = [o.output_ids for o in eng.generate(prompts, dataclasses.replace(biased, lookahead=False))]
    assert on == off and on != plain
    assert sum(out.count(common) for out in on) < sum(out.count(common) for out in plain)

    # a short chat answer ends with EOS; min_tokens keeps it going past it, drafts or not
    chat = apply_chat_template(tokenizer, [{"role": "user", "content": "Say hi."}])
    short = eng.generate([chat], SamplingParams(temperature=0.0, max_tokens=64))[0]
    assert short.finish_reason == "stop" and len(short.output_ids) < 30
    eos = set(eng.eos_ids)
    longer = SamplingParams(temperature=0.0, max_tokens=64, min_tokens=30)
    on1 = eng.generate([chat], longer)[0]
    off1 = eng.generate([chat], dataclasses.replace(longer, lookahead=False))[0]
    assert on1.output_ids == off1.output_ids and len(on1.output_ids) >= 30
    assert not eos & set(on1.output_ids[:30])
    assert on1.output_ids[: len(short.output_ids) - 1] == short.output_ids[:-1]  # the same text up to its EOS


def test_penalties_keep_on_equal_off(drafting_engine: LLMEngine, tokenizer: Any) -> None:
    """A tree row is penalised for the output and the drafts on its own path (repetition, presence,
    frequency), as plain decoding penalises that position: greedy and seeded sampled outputs with
    drafts equal plain decoding's, drafts are taken, and the penalties change the output."""
    eng = drafting_engine
    prompts = code_edit_ids(tokenizer, 3) + [tokenizer(REPEAT_PROMPT)["input_ids"]]
    plain = [o.output_ids for o in eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=48))]
    # rows penalised for the output alone (not their paths) gave other tokens with the last two
    # (2 and 1 of the 4 prompts, measured); a repetition penalty only differs on tokens not in the prompt
    for params in (SamplingParams(temperature=0.0, max_tokens=48, repetition_penalty=1.15, presence_penalty=1.5),
                   SamplingParams(temperature=0.0, max_tokens=48, frequency_penalty=1.0),
                   SamplingParams(temperature=0.7, max_tokens=48, frequency_penalty=0.3, repetition_penalty=1.1,
                                  seed=11)):
        before = eng.speculator.stats.num_accepted_tokens
        on = [o.output_ids for o in eng.generate(prompts, params)]
        assert eng.speculator.stats.num_accepted_tokens > before + 10, params  # drafts were verified
        off = [o.output_ids for o in eng.generate(prompts, dataclasses.replace(params, lookahead=False))]
        assert on == off, params
        assert on != plain, params


def _occurs(seq: list[int], word: tuple[int, ...]) -> bool:
    return any(tuple(seq[i : i + len(word)]) == word for i in range(len(seq) - len(word) + 1))


def test_bad_words_and_allowed_tokens_keep_on_equal_off(drafting_engine: LLMEngine, tokenizer: Any) -> None:
    """vLLM's bad_words ban a word's last token in a row whose path ends with the rest of it (a
    draft path included), allowed_token_ids mask every row alike: greedy output with drafts equals
    plain decoding's, drafts are taken, and each option changes the output as it says."""
    eng = drafting_engine
    prompts = code_edit_ids(tokenizer, 3)
    plain = [o.output_ids for o in eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40))]
    # a word of several tokens that the answers copy from their prompts (drafts will hold it)
    text = " ".join(tokenizer.decode(out) for out in plain)
    word, seqs = next((w, ids) for w in re.findall(r"[A-Za-z_]{6,}", text)
                      for ids in [bad_word_ids(tokenizer, [w])]
                      if any(len(q) > 1 and any(_occurs(out, q) for out in plain) for q in ids))
    banned = SamplingParams(temperature=0.0, max_tokens=40, bad_words=(word,))
    before = eng.speculator.stats.num_accepted_tokens
    on = [o.output_ids for o in eng.generate(prompts, banned)]
    assert eng.speculator.stats.num_accepted_tokens > before + 10
    off = [o.output_ids for o in eng.generate(prompts, dataclasses.replace(banned, lookahead=False))]
    assert on == off and on != plain, word
    assert not any(_occurs(out, q) for out in on for q in seqs)

    common = Counter(t for out in plain for t in out).most_common(1)[0][0]
    allowed = tuple(sorted({t for p in prompts for t in p} - {common}))
    only = SamplingParams(temperature=0.0, max_tokens=40, allowed_token_ids=allowed)
    before = eng.speculator.stats.num_accepted_tokens
    on = [o.output_ids for o in eng.generate(prompts, only)]
    assert eng.speculator.stats.num_accepted_tokens > before + 10
    off = [o.output_ids for o in eng.generate(prompts, dataclasses.replace(only, lookahead=False))]
    assert on == off and on != plain
    assert set(t for out in on for t in out) <= set(allowed)


def test_structured_output_keeps_on_equal_off(drafting_engine: LLMEngine, tokenizer: Any) -> None:
    """Tree rows masked by their own path: greedy output under a JSON schema, a regex and a choice
    equals plain decoding's, drafts are taken, and the output follows the grammar."""
    eng = drafting_engine
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "hobbies": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age", "hobbies"]}
    ask = "Describe a person named Alice who is 30 and likes chess and tennis, as JSON with name, age, hobbies."
    prompt = apply_chat_template(tokenizer, [{"role": "user", "content": ask}])
    cases = [(StructuredSpec("json_schema", json.dumps(schema)), 100), (StructuredSpec("json"), 100),
             (StructuredSpec("regex", r"[0-9]{3}-[0-9]{4}"), 20), (StructuredSpec("choice", '["yes", "no"]'), 20)]
    before = eng.speculator.stats.num_accepted_tokens
    texts = []
    for spec, max_tokens in cases:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, structured=spec)
        on = eng.generate([prompt], params)[0]
        off = eng.generate([prompt], dataclasses.replace(params, lookahead=False))[0]
        assert on.output_ids == off.output_ids and on.finish_reason == "stop", spec
        texts.append(on.text)
    assert eng.speculator.stats.num_accepted_tokens > before + 10
    person = json.loads(texts[0])
    assert set(person) == {"name", "age", "hobbies"} and isinstance(person["age"], int)
    json.loads(texts[1])
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", texts[2]) and texts[3] in ("yes", "no")
    # sampled, the grammar holds too: every output is a path the grammar takes (a cut one, a prefix
    # of a valid answer), and the finished ones parse
    sampled = eng.generate([prompt] * 4, [SamplingParams(temperature=1.0, max_tokens=100, seed=i,
                                                         structured=cases[0][0]) for i in range(4)])
    for o in sampled:
        fresh = eng.grammars.grammar(cases[0][0])
        assert all(fresh.accept(t) for t in o.output_ids), o.text
    finished = [o for o in sampled if o.finish_reason == "stop"]
    assert finished and all(set(json.loads(o.text)) == {"name", "age", "hobbies"} for o in finished)


def test_a_sequence_preempted_for_its_own_draft_is_recomputed_without_it(model_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step the sequence gets a draft as long as its tokens less one. Its step would need 3
    KV blocks of a pool of 2, so it is preempted, and recomputed in the same step (its own blocks
    free again) in a chunk of exactly its dropped draft's step length. The chunk must be its
    tokens: a 1 + 1 stack under load once verified the draft's tree there instead, and a greedy
    output diverged. Outputs equal plain decoding's."""
    dtype = "bfloat16" if cpu_linear.available() else "auto"  # (row-invariant there: a chunk's bits equal a decode's)
    prompt = [100 + 37 * i % 30000 for i in range(20)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    plain = LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, num_kv_blocks=8, lookahead=False))
    want = plain.generate([prompt], params)[0].output_ids
    eng = LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, num_kv_blocks=2, prefix_caching=False))
    seq = eng.add_request("own-draft", prompt, params)

    def propose() -> dict[str, DraftTree]:
        if seq.is_prefilling or seq.finished:
            return {}
        tree = DraftTree()
        tree.add_branch((prompt * 2)[: seq.num_tokens - 1], budget=seq.num_tokens)  # a chain: one node per token
        return {seq.request_id: tree}

    monkeypatch.setattr(eng, "_propose", propose)
    while eng.has_work:
        eng.step()
    assert seq.output_ids == want
    assert eng.scheduler.num_preemptions >= 10  # once per decoding step
    eng.allocator.check_integrity()
    assert eng.allocator.num_used == 0

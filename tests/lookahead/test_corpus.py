"""The server's corpus as a draft source (``--lookahead-corpus``): its index on hand-built
documents (continuations counted, cut at each document's end, never across two), the drafter's
order of sources, the files it reads, and on the real model: a fresh engine drafts an answer the
corpus holds from the first request, and the output stays what plain decoding gives."""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lookahead.corpus import CorpusIndex, corpus_texts
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template
from launcher.__main__ import parser, stack_config

DOCS = [[1, 2, 3, 4, 5, 6], [7, 2, 3, 4, 9], [2, 3, 4, 5, 6, 8]]


def test_the_index_counts_continuations_within_each_document() -> None:
    index = CorpusIndex(DOCS)
    assert index.num_documents == 3 and len(index) == 17 + 3
    # (2, 3) is followed by 4 5 6 twice and 4 9 once, each cut at its document's end (paths from the key)
    assert sorted(index.branches((2, 3), budget=8, max_depth=8, limit=16)) == [[4, 5, 6, 8], [4, 9]]
    assert index.branches((2, 3), budget=8, max_depth=2, limit=16) == [[4, 5], [4, 9]]  # the likelier first
    assert index.has((3, 4)) and index.has((1, 2, 3)) and index.branches((5, 6), 8, 8, 16) == [[8]]
    assert not index.has((6, 7))  # across two documents: no key
    assert not index.has((4, 9)) and index.branches((4, 9), 8, 8, 16) == []  # a document's end continues nothing
    assert not index.has((2,)) and not index.has((9, 9, 9))  # 1-token keys are not indexed
    assert CorpusIndex([]).branches((1, 2), 8, 8, 16) == [] and not CorpusIndex([]).has((1, 2))


def test_many_occurrences_are_counted_over_a_spread_of_them() -> None:
    index = CorpusIndex([[1, 2, 10 + i // 100] for i in range(300)])  # 10 in the first hundred, ..., 12 in the last
    counted = index.branches((1, 2), budget=8, max_depth=4, limit=6)
    assert sorted(map(tuple, counted)) == [(10,), (11,), (12,)]  # all three continuations, not only the last


def test_the_corpus_drafts_after_the_requests_own_text() -> None:
    d = Drafter(DrafterConfig(), corpus=CorpusIndex([[40, 41, 42, 43, 44, 45]]))
    text = [5, 6, 41, 42]
    d.observe("r", text, len(text))
    m = d.match("r", text)
    assert (m.source, m.key_length) == ("corpus", 2)
    assert d.propose("r", text, 8, 8).tokens == [43, 44, 45]
    own = [41, 42, 9, 9, 41, 42]  # its own text continues (41, 42) too: that drafts first (a tie of keys)
    d.observe("own", own, len(own))
    assert d.match("own", own).source == "own"
    assert d.propose("own", own, 8, 2).tokens == [9, 9]  # (after it, a cache adds only its longest key's)
    longer = [7, 42, 43, 8, 41, 42, 43]  # the corpus continues a longer key (41, 42, 43) than the own text (42, 43)
    d.observe("longer", longer, len(longer))
    assert d.match("longer", longer).source == "corpus" and d.propose("longer", longer, 8, 8).tokens[:2] == [44, 45]
    assert Drafter(DrafterConfig()).match("x", text) is None  # (without a corpus: nothing)


def test_corpus_files_folders_and_their_errors(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("alpha")
    (tmp_path / "docs" / "b.bin").write_bytes(b"\x00")  # not a text file: skipped
    (tmp_path / "lines.jsonl").write_text(json.dumps("beta") + "\n\n" + json.dumps({"text": "gamma"}) + "\n")
    assert list(corpus_texts([str(tmp_path / "docs"), str(tmp_path / "lines.jsonl")])) == ["alpha", "beta", "gamma"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        list(corpus_texts([str(tmp_path / "bad.jsonl")]))
    with pytest.raises(FileNotFoundError):
        list(corpus_texts([str(tmp_path / "missing")]))


def test_the_flags_reach_the_engine_and_make_runs_services(tmp_path: Path) -> None:
    import argparse
    p = argparse.ArgumentParser()
    EngineConfig.add_cli_args(p)
    assert EngineConfig.from_cli(p.parse_args(["--lookahead-corpus", "a", "b"])).lookahead_corpus == ("a", "b")
    config = stack_config(parser().parse_args(["--lookahead-corpus", "docs", "--kvstore-snapshot", "kv.snap",
                                               "--lookahead-state", "tries"]))
    decode = config.extra_decode_args
    assert decode[decode.index("--lookahead-corpus") + 1] == str(Path("docs").resolve())
    assert decode[decode.index("--lookahead-state") + 1] == str(Path("tries").resolve() / "{worker_id}.npz")
    assert config.kvstore_snapshot == str(Path("kv.snap").resolve())  # (the kvstore's, launcher.stack passes it)


def _run(eng: LLMEngine, prompt: list[int], params: SamplingParams) -> tuple[list[int], int]:
    """(output ids, accepted draft tokens) of one request, under a cache salt of its own (no
    other request's output drafts for it)."""
    seq = eng.add_request(f"c-{secrets.token_hex(4)}", prompt, params, cache_salt=secrets.token_hex(8))
    while eng.has_work:
        eng.step()
    return list(seq.output_ids), seq.num_accepted_tokens


def test_a_fresh_engine_drafts_an_answer_its_corpus_holds(model_dir: Path, tmp_path: Path) -> None:
    plain = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=128, max_num_seqs=4))
    prompt = apply_chat_template(plain.tokenizer, [{"role": "user", "content": "Describe a lighthouse at night."}])
    greedy = dict(temperature=0.0, max_tokens=64, ignore_eos=True)
    answer, _ = _run(plain, prompt, SamplingParams(**greedy, lookahead=False))
    _, unaided = _run(plain, prompt, SamplingParams(**greedy))
    (tmp_path / "answers.jsonl").write_text(json.dumps({"text": plain.tokenizer.decode(answer)}) + "\n")
    del plain
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=128, max_num_seqs=4,
                                 lookahead_corpus=(str(tmp_path / "answers.jsonl"),)))
    out, accepted = _run(eng, prompt, SamplingParams(**greedy))
    assert out == answer
    assert accepted >= len(answer) // 2 and accepted > unaided + 10, (accepted, unaided)
    st = eng.speculator.stats if eng.speculator is not None else None
    assert st is not None and st.accepted_by_source["corpus"] >= accepted // 2, st  # the corpus drafted them
    assert sum(st.accepted_by_source.values()) == st.num_accepted_tokens
    other = apply_chat_template(eng.tokenizer, [{"role": "user", "content": "Name three rivers."}])
    want, _ = _run(eng, other, SamplingParams(**greedy, lookahead=False))
    assert _run(eng, other, SamplingParams(**greedy))[0] == want  # a request the corpus does not hold: the same

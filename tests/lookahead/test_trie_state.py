"""Lookahead's global trie across a decode worker's restarts (``--lookahead-state``): saved and
loaded whole (every key, node and count), refused for another model or when broken, and on the
real model: an engine started from a saved trie drafts, for its first request, what the engine
that saved it learnt, the output unchanged."""
from __future__ import annotations

from pathlib import Path

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.lookahead.ngram_trie import NGramTrie, TrieNode
from engine.lookahead.trie_state import load_trie, save_trie
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template


def _shape(node: TrieNode) -> tuple[float, dict[int, object]]:
    return node.count, {tok: _shape(child) for tok, child in node.children.items()}


def _tries_equal(a: NGramTrie, b: NGramTrie) -> bool:
    return a.num_nodes == b.num_nodes and {k: _shape(r) for k, r in a.roots.items()} == \
        {k: _shape(r) for k, r in b.roots.items()}


def test_a_trie_comes_back_whole(tmp_path: Path) -> None:
    d = Drafter(DrafterConfig())
    for i, text in enumerate([[1, 2, 3, 4, 5, 6, 7, 8, 9], [2, 3, 4, 5, 1, 2, 3, 4], [9, 8, 7, 2, 3, 4, 5, 6]]):
        d.observe(f"r{i}", text[:2], 2)
        d.retire(f"r{i}", text, 2)  # their outputs go to the global trie
    trie = d.global_trie
    assert trie.num_nodes > 20
    assert save_trie(trie, tmp_path / "t.npz", "model-a") == trie.num_nodes
    back = load_trie(tmp_path / "t.npz", "model-a", 1 << 20)
    assert back is not None and _tries_equal(trie, back)
    assert back.branches((2, 3), 8, 8) == trie.branches((2, 3), 8, 8) != []
    empty = load_trie(_saved(NGramTrie(), tmp_path / "e.npz"), "model-a", 1 << 20)
    assert empty is not None and empty.num_nodes == 0


def _saved(trie: NGramTrie, path: Path) -> Path:
    save_trie(trie, path, "model-a")
    return path


def test_another_models_trie_or_a_broken_file_is_left_unread(tmp_path: Path) -> None:
    trie = NGramTrie()
    trie.insert((1, 2), [3, 4])
    path = _saved(trie, tmp_path / "t.npz")
    assert load_trie(path, "model-b", 1 << 20) is None
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:-40])
    assert load_trie(tmp_path / "cut.npz", "model-a", 1 << 20) is None
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert load_trie(tmp_path / "junk.npz", "model-a", 1 << 20) is None
    assert load_trie(tmp_path / "absent.npz", "model-a", 1 << 20) is None
    assert not (tmp_path / "t.npz.tmp").exists()


def _accepted(eng: LLMEngine, prompt: list[int], tag: str) -> tuple[list[int], int]:
    seq = eng.add_request(tag, prompt, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True))
    while eng.has_work:
        eng.step()
    return list(seq.output_ids), seq.num_accepted_tokens


def test_an_engine_started_from_a_saved_trie_drafts_what_it_learnt(model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "trie.npz"
    config = EngineConfig(model=str(model_dir), num_kv_blocks=128, max_num_seqs=4, lookahead_state=str(state))
    first = LLMEngine(config)  # no state yet: an empty trie
    prompt = apply_chat_template(first.tokenizer, [{"role": "user", "content": "Describe a harbour at dawn."}])
    answer, cold = _accepted(first, prompt, "a")  # its output goes to the global trie
    assert first.speculator is not None
    save_trie(first.speculator.drafter.global_trie, state, first.layout.model_id)
    del first
    warm = LLMEngine(config)  # the same prompt again, on a restarted engine: the trie knows its answer
    out, accepted = _accepted(warm, prompt, "b")
    assert out == answer  # lossless (and equal to plain decoding: tests/lookahead/test_lossless.py)
    assert accepted > cold + 10, (accepted, cold)

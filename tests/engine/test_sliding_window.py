"""Mistral's sliding window: a query at position p sees only keys at positions > p - W.

A small random-weight Mistral (window 16, far shorter than the sequences) is saved in the Hugging Face
format and loaded by Grove's loader with the torch backend and with the C++ kernel; its logits must
equal transformers' for a whole prefill, for decode steps past the window and for a lookahead tree
placed past the window.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.attention import get_backend
from engine.batch import SeqInput, plan_batch
from engine.kv_layout import KVLayout
from engine.kv_pool import KVPool
from engine.model import Model
from engine.model_loader import load_model

WINDOW = 16
TOL = 1e-4


@pytest.fixture(scope="module", params=["torch", "cpu"])
def mistral(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, torch.nn.Module]:
    """The model on each CPU backend: the torch reference path and the C++ kernel (the default)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                        sliding_window=WINDOW, tie_word_embeddings=False)
    hf = MistralForCausalLM(cfg).eval()
    d: Path = tmp_path_factory.mktemp("mistral")
    hf.save_pretrained(d, safe_serialization=True)
    model = load_model(d, get_backend(request.param, "cpu", cfg.head_dim, WINDOW))
    assert model.backend.name == request.param
    assert model.config.sliding_window == WINDOW
    return model, hf


def _pool(model: Model, tokens: int) -> KVPool:
    c = model.config
    return KVPool(KVLayout("t", "float32", 16, c.num_layers, c.num_kv_heads, c.head_dim), -(-tokens // 16) + 1)


def _hf_logits(hf: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0].float()


def _ids(n: int, seed: int = 1) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_window_matters(mistral: tuple[Model, torch.nn.Module]) -> None:
    """The check below can fail: without the window, the logits past it differ from transformers'."""
    model, hf = mistral
    ids = _ids(60)
    pool = _pool(model, 60)
    full = model.run(plan_batch([SeqInput(ids, 0, list(range(pool.num_blocks)), logits="all")], 16), pool)
    assert (full[WINDOW + 4:] - _hf_logits(hf, ids)[WINDOW + 4:]).abs().max() > 1e-2


def test_prefill_and_decode_past_the_window(mistral: tuple[Model, torch.nn.Module]) -> None:
    model, hf = mistral
    ids = _ids(70)
    ref = _hf_logits(hf, ids)
    pool = _pool(model, 70)
    table = list(range(pool.num_blocks))
    # prefill in two chunks (the second starts past the window), then one decode step per token
    first = model.run(plan_batch([SeqInput(ids[:20], 0, table, logits="all")], 16, sliding_window=WINDOW), pool)
    second = model.run(plan_batch([SeqInput(ids[20:45], 20, table, logits="all")], 16, sliding_window=WINDOW), pool)
    got = [first, second]
    for i in range(45, 70):
        got.append(model.run(plan_batch([SeqInput([ids[i]], i, table)], 16, sliding_window=WINDOW), pool))
    diff = (torch.cat(got) - ref).abs().max().item()
    assert diff <= TOL, f"max abs logit difference {diff:.2e}"


def test_batched_decode_of_unequal_lengths(mistral: tuple[Model, torch.nn.Module]) -> None:
    """Two sequences decoded together, one inside its window and one past it."""
    model, hf = mistral
    a, b = _ids(12, seed=2), _ids(50, seed=3)
    pool = _pool(model, 80)
    ta, tb = [0], list(range(1, 5))
    model.run(plan_batch([SeqInput(a[:-1], 0, ta), SeqInput(b[:-1], 0, tb)], 16, sliding_window=WINDOW), pool)
    step = plan_batch([SeqInput(a[-1:], len(a) - 1, ta), SeqInput(b[-1:], len(b) - 1, tb)], 16, sliding_window=WINDOW)
    out = model.run(step, pool)
    ref = torch.stack([_hf_logits(hf, a)[-1], _hf_logits(hf, b)[-1]])
    assert (out - ref).abs().max().item() <= TOL


def test_tree_past_the_window(mistral: tuple[Model, torch.nn.Module]) -> None:
    """A lookahead tree after 40 cached tokens: each node's logits are those of its own path."""
    model, hf = mistral
    prefix, tree = _ids(40, seed=4), _ids(5, seed=5)
    parents = [-1, 0, 0, 1, 3]  # node 0 is the root; 1 and 2 are siblings; 3 under 1; 4 under 3
    pool = _pool(model, 50)
    table = list(range(pool.num_blocks))
    model.run(plan_batch([SeqInput(prefix, 0, table)], 16, sliding_window=WINDOW), pool)
    out = model.run(plan_batch([SeqInput(tree, 40, table, parents=parents, logits="all")], 16,
                               sliding_window=WINDOW), pool)
    for node, path in enumerate([[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 3, 4]]):
        ref = _hf_logits(hf, prefix + [tree[i] for i in path])[-1]
        diff = (out[node] - ref).abs().max().item()
        assert diff <= TOL, f"node {node}: max abs logit difference {diff:.2e}"


def test_triton_backend_refuses_a_window() -> None:
    with pytest.raises(ValueError, match="sliding window"):
        get_backend("triton", "cpu", 64, sliding_window=WINDOW)

"""Pooling requests (the embeddings API) in the engine: each pooled vector equals transformers'
final hidden states pooled the same way, for short prompts and one the engine computes in chunks,
beside a generating request whose output stays what it is alone."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.pooling import PoolingParams, model_pooling, pooling_from_config
from engine.sampling_params import SamplingParams

TOLERANCE = 1e-4  # of the largest entry; fp32, Grove's fused products against transformers' (seen: ~2e-6)


def _hf_pooled(hf_model: Any, ids: list[int], params: PoolingParams) -> torch.Tensor:
    with torch.no_grad():
        hidden = hf_model.model(torch.tensor([ids])).last_hidden_state[0].float()  # [n, hidden], after the final norm
    v = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[params.pooling]
    return torch.nn.functional.normalize(v, dim=0) if params.normalize else v


def _run(engine: Any, jobs: list[tuple[list[int], PoolingParams | None]]) -> list[Any]:
    seqs = []
    for i, (ids, pooling) in enumerate(jobs):
        seq = engine.make_sequence(f"pool-{uuid.uuid4().hex[:8]}-{i}", ids, SamplingParams(max_tokens=8, temperature=0.0),
                                   pooling=pooling)
        engine.add_sequence(seq)
        seqs.append(seq)
    while engine.has_work:
        engine.step()
    return seqs


@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooled_vectors_equal_transformers(engine: Any, hf_model: Any, tokenizer: Any, pooling: str,
                                           normalize: bool) -> None:
    params = PoolingParams(pooling, normalize)
    long = tokenizer("The river runs to the sea; " * 120)["input_ids"]
    assert len(long) > engine.config.max_num_batched_tokens  # computed in chunks
    prompts = [tokenizer("A haiku about trees.")["input_ids"], long]
    generating = tokenizer("Count: one, two, three,")["input_ids"]
    alone = _run(engine, [(generating, None)])[0].output_ids
    seqs = _run(engine, [(prompts[0], params), (generating, None), (prompts[1], params)])
    assert seqs[1].output_ids == alone
    for seq, ids in zip((seqs[0], seqs[2]), prompts):
        assert seq.output_ids == [] and seq.embedding is not None
        got, want = torch.tensor(seq.embedding), _hf_pooled(hf_model, ids, params)
        assert (got - want).abs().max().item() < TOLERANCE * max(1.0, want.abs().max().item())
    assert engine.allocator.num_used == 0


def test_last_token_pooling_starts_from_a_cached_prefix(engine: Any, tokenizer: Any) -> None:
    """"last" needs only the last token computed: the second request reads the rest from the
    prefix cache and gets the same vector; "mean" computes its prompt whole, cached or not."""
    ids = tokenizer(f"{uuid.uuid4()} a prompt of several blocks. " * 8)["input_ids"]
    last = PoolingParams("last")
    first, again = (_run(engine, [(ids, last)])[0] for _ in range(2))
    assert first.num_cached_prompt == 0 and again.num_cached_prompt >= len(ids) - engine.config.block_size
    assert torch.allclose(torch.tensor(first.embedding), torch.tensor(again.embedding), atol=1e-5)
    assert _run(engine, [(ids, PoolingParams("mean"))])[0].num_cached_prompt == 0


def test_an_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="pooling"):
        PoolingParams("max")


def test_the_models_own_pooling_and_the_servers_override(tmp_path: Path) -> None:
    """A sentence-transformers folder says its pooling (modules.json: Pooling, Normalize); vLLM's
    --pooler-config overrides it; a folder without says nothing (the last token, normalised)."""
    assert model_pooling(tmp_path) == PoolingParams("last", True)
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert model_pooling(tmp_path) == PoolingParams("mean", False)
    modules = json.loads((tmp_path / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(json.dumps(
        [*modules, {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    own = model_pooling(tmp_path)
    assert own == PoolingParams("mean", True)
    assert pooling_from_config('{"pooling_type": "CLS"}', own) == PoolingParams("cls", True)
    assert pooling_from_config('{"normalize": false}', own) == PoolingParams("mean", False)
    with pytest.raises(ValueError, match="pooling"):
        pooling_from_config('{"pooling_type": "MAX"}', own)

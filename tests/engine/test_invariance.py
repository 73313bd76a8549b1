"""The start-up probe of row invariance (engine.invariance) on the real model.

On an H200 the bundled model in bf16 gave different greedy outputs with lookahead on and off (cuBLAS
chooses a product's kernel by its row count): the engine had assumed any GPU exact. The probe runs
the model itself, so it holds on any device; here it must pass where Grove's CPU kernels serve bf16,
and fail, turning lookahead off with a warning, where a product's rows depend on the step.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.invariance as invariance
import engine.model as model_module
from engine.batch import Batch, plan_batch
from engine.engine_config import EngineConfig
from engine.invariance import forward_row_invariant
from engine.layers import products_row_invariant
from engine.llm_engine import LLMEngine


def _probe(eng: LLMEngine) -> bool:
    return forward_row_invariant(eng.model, eng.kv, eng.allocator, eng.config.block_size, eng.config.device)


def test_probe_passes_in_bf16_and_returns_the_blocks(model_dir: Path) -> None:
    eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=64, lookahead=False))
    free = eng.allocator.num_free
    assert _probe(eng)
    assert eng.allocator.num_free == free


def test_probe_fails_where_rows_depend_on_the_step(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """fp32 products (torch's, not row-invariant on this CPU) and a bf16 norm whose output depends on
    the step's row count are both caught; the latter turns lookahead off at start, with a warning."""
    fp32 = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", num_kv_blocks=64, lookahead=False))
    w = fp32.model.weights
    # torch's fp32 products are not row-invariant on the CPUs seen so far (an AMD EPYC here); the
    # attention is, in every dtype: the probe must say what the products' own probe says
    products = products_row_invariant([w.layers[0].qkv, w.layers[0].o, w.layers[0].gate_up, w.layers[0].down])
    assert _probe(fp32) == products
    norm_linear = model_module.norm_linear

    def step_dependent(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        out = norm_linear(x, *args, **kwargs)  # type: ignore[arg-type]
        return out if x.shape[0] == 1 else out * (1 + 2 ** -6)  # a wide step rounds differently
    monkeypatch.setattr(model_module, "norm_linear", step_dependent)
    with caplog.at_level(logging.WARNING, logger="engine.llm_engine"):
        eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=64))
    assert eng.speculator is None
    assert "lookahead off" in caplog.text and "share" in caplog.text


def test_probe_compares_a_second_branch(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """In a tree, a node of the second branch sits after the first branch's nodes, not right after
    its ancestors as in plain decoding (the case an H200's tiled tree attention could round apart).
    An attention that rounds only such nodes differently fails the probe by the second-branch checks
    alone."""
    eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=64, lookahead=False))
    masks: list[torch.Tensor | None] = []

    def recording_plan(*args: Any, **kwargs: Any) -> Batch:
        batch = plan_batch(*args, **kwargs)
        masks.append(batch.attn.tree_mask)
        return batch
    monkeypatch.setattr(invariance, "plan_batch", recording_plan)
    attend = eng.model.backend.attend

    def gapped_rows_apart(q: torch.Tensor, cache: Any, plan: Any, scale: float) -> torch.Tensor:
        out = attend(q, cache, plan, scale)
        mask = masks[-1]
        if mask is not None:  # a row whose visible new tokens are not one run ending at itself
            idx = torch.arange(mask.shape[1])
            first = torch.where(mask, idx, mask.shape[1]).min(1).values
            last = torch.where(mask, idx, -1).max(1).values
            gapped = mask.sum(1) < last - first + 1
            out[gapped] *= 1 + 2 ** -6
        return out
    monkeypatch.setattr(eng.model.backend, "attend", gapped_rows_apart)
    with caplog.at_level(logging.INFO, logger="engine.invariance"):
        assert not _probe(eng)
    differ = caplog.text.split("row-invariance probe: ")[1].split(" differ")[0]
    assert differ == "a second branch's node at depth 1, a second branch's node at depth 2"

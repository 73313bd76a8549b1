"""The engine on the path a 16-bit model takes on a GPU, run here under the Triton interpreter.

On a GPU, 16-bit products and norms go through the row-invariant Triton kernels and the decode
attention runs its row-invariant mode (engine.layers._gpu_invariant, kernels.paged_attention). No
GPU here, so the test sends the engine down that path on the CPU: the start-up probe
(engine.invariance) must pass on it where it fails on torch's products, and lookahead on must equal
off token for token while drafts are accepted.

In fp32 (the interpreter converts bf16 tiles in Python, ~10x slower; the kernels' code is the same
for both), on the bundled model cut to its first layer (a second doubled the tests' time, and one
layer already takes every kernel and the KV compaction) and its LM head to the first 4,096 tokens,
with larger product tiles than a GPU's: the interpreter still takes about half a second a step.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.layers as layers
import kernels.invariant_matmul as invariant_matmul
import kernels.paged_attention as paged_attention
import kernels.prefill_attention as prefill_attention
from engine.batch import SeqInput, plan_batch
from engine.engine_config import EngineConfig
from engine.invariance import forward_row_invariant
from engine.layers import products_row_invariant
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from kernels.backend import TritonAttentionBackend
from tests.kernels.paged_data import DEVICE
from engine.lookahead.budget import FreeWideSteps

_PROMPT = "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat. the cat"


def _cut(eng: LLMEngine, row_invariant: bool) -> None:
    eng.model.backend = TritonAttentionBackend(row_invariant=row_invariant)
    eng.model.weights.layers = eng.model.weights.layers[:1]  # the forward zips layers with the pool's
    eng.model.weights.lm_head = eng.model.weights.lm_head[:4096]


def _probe(eng: LLMEngine) -> bool:
    return forward_row_invariant(eng.model, eng.kv, eng.allocator, eng.config.block_size, eng.config.device)


def test_gpu_path_is_row_invariant_and_lookahead_lossless(model_dir: Path, tokenizer: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # built on the torch backend (its calibration at torch speed, to 64 tokens: the cost model is
    # replaced below), then cut and sent down the path
    engines = {la: LLMEngine(EngineConfig(model=str(model_dir), device=str(DEVICE), dtype="float32", num_kv_blocks=64,
                                          attention_backend="torch", lookahead=la, lookahead_max_step_tokens=64))
               for la in (False, True)}
    off, on = engines[False], engines[True]
    _cut(off, row_invariant=False)
    layer = off.model.weights.layers[0]
    # torch's fp32 products: a row's bits change with the step (on the CPUs seen so far)
    assert _probe(off) == products_row_invariant([layer.qkv, layer.o, layer.gate_up, layer.down])
    monkeypatch.setattr(layers, "_gpu_invariant", lambda x: True)
    monkeypatch.setattr(invariant_matmul, "BLOCK_N", 256)
    monkeypatch.setattr(invariant_matmul, "BLOCK_K", 256)
    monkeypatch.setattr(paged_attention, "_INVARIANT_BLOCK_N", 128)
    _cut(off, row_invariant=True)
    _cut(on, row_invariant=True)
    assert _probe(on)
    assert on.speculator is not None
    # draft whatever it can: this is about verification, not the budget (the cost model calibrated
    # on another path, beside a loaded test run, may call drafts too dear)
    on.speculator.cost, on.speculator.max_step_tokens = FreeWideSteps(), 1024

    ids = tokenizer(_PROMPT)["input_ids"]
    outputs = {}
    for la, eng in engines.items():
        seq = eng.add_request(f"gpu-path-{la}", ids, SamplingParams(temperature=0.0, max_tokens=10))
        while eng.has_work:
            eng.step()
        outputs[la] = list(seq.output_ids)
        assert eng.allocator.num_used == 0
    assert len(outputs[True]) == 10 and outputs[True] == outputs[False]
    assert on.speculator.stats.num_accepted_tokens > 0


def test_gpu_path_prefill_bits_do_not_depend_on_chunks(model_dir: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """On an H200, bf16 lookahead stayed exact for 1 request but changed greedy output at 16, where
    prompt chunks share steps with other requests' decodes and, with lookahead on, their trees. A
    chunk of more than 64 tokens went to the prefill kernel, in its tree variant when the step held
    a tree, and a shorter one to the decode kernel, each rounding its own way (the likely cause, not
    yet confirmed there). On the GPU path every chunk takes the decode kernel's paths, so a
    prompt's last logits must have the same bits whether it is prefilled in one chunk, in chunks on
    either side of 64 tokens, beside a decode or beside a tree."""
    eng = LLMEngine(EngineConfig(model=str(model_dir), device=str(DEVICE), dtype="float32", num_kv_blocks=64,
                                 attention_backend="torch", lookahead=False))
    monkeypatch.setattr(layers, "_gpu_invariant", lambda x: True)
    monkeypatch.setattr(invariant_matmul, "BLOCK_N", 256)
    monkeypatch.setattr(invariant_matmul, "BLOCK_K", 256)
    monkeypatch.setattr(paged_attention, "_INVARIANT_BLOCK_N", 128)
    # the prefill kernel's KV tile is its own (autotuned by shape on a GPU): were a long chunk routed
    # to it, its online softmax would group the keys otherwise than the decode kernel's
    monkeypatch.setattr(prefill_attention, "_INTERPRET_BLOCK_N", 32)
    _cut(eng, row_invariant=True)
    ids = tokenizer(" ".join([_PROMPT] * 4))["input_ids"][:80]
    bs = eng.config.block_size
    table, other = eng.allocator.allocate(-(-len(ids) // bs)), eng.allocator.allocate(2)

    def prefill(chunks: list[int], beside: tuple[int, ...] | None = None) -> torch.Tensor:
        start, logits = 0, None
        for n in chunks:
            seqs = [SeqInput(ids[start:start + n], start, table)]
            if beside is not None:  # another sequence's decode (one token) or lookahead tree shares the step
                seqs.append(SeqInput(ids[:len(beside)], 0, other, parents=beside if len(beside) > 1 else None))
            logits = eng.model.run(plan_batch(seqs, bs, eng.config.device), eng.kv)[0]
            start += n
        return logits

    whole = prefill([80])
    assert torch.equal(prefill([40, 40]), whole)
    assert torch.equal(prefill([64, 16]), whole)
    assert torch.equal(prefill([70, 10], beside=(-1,)), whole)
    # the case an H200 failed at 16 requests: a prompt chunk beside a tree, where the step's tree
    # mask sent the chunk to the prefill kernel's tree variant and alone to its causal one
    assert torch.equal(prefill([10, 70], beside=(-1, 0, 1, 0)), whole)
    eng.allocator.free(table)
    eng.allocator.free(other)
    # the start-up probe checks it too (it passes on the paths: the test above): it names the chunk
    # where chunks over 64 tokens take the prefill kernel (the multi-token mode)
    eng.model.backend = TritonAttentionBackend(row_invariant=False)
    with caplog.at_level(logging.INFO, logger="engine.invariance"):
        assert not _probe(eng)
    assert "a prompt chunk beside a tree" in caplog.text

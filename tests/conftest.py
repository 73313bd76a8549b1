"""Shared fixtures: the real bundled model (converted once into the cache), transformers beside it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(2)
logging.basicConfig(level=logging.INFO)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from engine.convert import convert_smollm2

    return convert_smollm2()


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    from engine.convert import convert_qwen

    return convert_qwen()


@pytest.fixture(scope="session")
def hf_model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Any:
    from engine.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> Any:
    """One real engine on the bundled model for the session (tests must leave it idle)."""
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=512))
    yield eng
    assert not eng.has_work, "a test left requests running in the shared engine"
    eng.allocator.check_integrity()
    assert eng.allocator.num_used == 0, "a test leaked KV blocks"


class HFReference:
    """transformers greedy outputs, computed once per (prompt, length) in the session; ``many``
    computes the missing ones of a list in left-padded batches (engine.reference.hf_greedy_batch)."""

    def __init__(self, model: Any, batch_size: int = 10) -> None:
        self.model = model
        self.batch_size = batch_size
        self.memo: dict[tuple[tuple[int, ...], int], Any] = {}

    def __call__(self, prompt_ids: list[int], max_new_tokens: int) -> Any:
        return self.many([prompt_ids], max_new_tokens)[0]

    def many(self, prompts: list[list[int]], max_new_tokens: int) -> list[Any]:
        from engine.reference import hf_greedy_batch

        missing = sorted({tuple(p) for p in prompts if (tuple(p), max_new_tokens) not in self.memo}, key=len)
        for i in range(0, len(missing), self.batch_size):  # similar lengths together: little padding
            chunk = missing[i : i + self.batch_size]
            for p, ref in zip(chunk, hf_greedy_batch(self.model, chunk, max_new_tokens)):
                self.memo[(p, max_new_tokens)] = ref
        return [self.memo[(tuple(p), max_new_tokens)] for p in prompts]


@pytest.fixture(scope="session")
def hf_reference(hf_model: Any) -> HFReference:
    return HFReference(hf_model)

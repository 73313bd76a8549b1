"""The engine with the Triton attention backend generates what it generates with the torch backend."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import torch

from engine.attention.torch_backend import TorchAttentionBackend
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from kernels.backend import TritonAttentionBackend
from tests.kernels.paged_data import DEVICE

# more than 80 tokens, so an 80-token chunk (> MAX_VERIFY_QUERY) runs the prefill kernel and the rest
# (the decode/verify kernel, as a chain) attends to the cached prefix; the repetition gives the
# engine's n-gram drafter lookahead trees to verify (decode/verify kernel with a tree mask)
_PROMPT = "Repeat the sentence exactly.\n" + "The quick brown fox jumps over the lazy dog near the river.\n" * 6 \
    + "The quick brown"


def _greedy(eng: LLMEngine, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and the logprob of each, from a run of the engine alone."""
    seq = eng.add_request(f"triton-check-{secrets.token_hex(4)}", prompt,
                          SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0))
    while eng.has_work:
        eng.step()
    return list(seq.output_ids), [lp for lp, _, _ in seq.logprobs]


def test_greedy_with_triton_backend_equals_torch_backend(tokenizer: Any, model_dir: Path) -> None:
    """One engine (one model load, the same chunked schedule), run with each attention backend.

    It is built on the torch backend so its lookahead calibration forwards run at torch speed, then
    the Triton run verifies the lookahead trees the engine drafts (lookahead is on by default)."""
    prompt = tokenizer(_PROMPT)["input_ids"]
    assert 80 + 4 < len(prompt) < 80 + 32  # two prompt chunks
    eng = LLMEngine(EngineConfig(model=str(model_dir), device=str(DEVICE), num_kv_blocks=16,
                                 max_num_batched_tokens=80, attention_backend="torch"))
    assert isinstance(eng.model.backend, TorchAttentionBackend)
    expected, expected_lp = _greedy(eng, prompt, 8)
    eng.model.backend = TritonAttentionBackend()
    got, got_lp = _greedy(eng, prompt, 8)
    assert got == expected and len(got) == 8
    # greedy tokens hide small attention errors; the chosen tokens' logprobs do not (fp32 model)
    torch.testing.assert_close(torch.tensor(got_lp), torch.tensor(expected_lp), atol=1e-3, rtol=0)
    eng.allocator.check_integrity()
    assert eng.allocator.num_used == 0

"""Grove's model code gives transformers' logits on real models (fp32, max abs diff <= 1e-3)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.attention import get_backend
from engine.batch import SeqInput, plan_batch
from engine.kv_layout import KVLayout
from engine.kv_pool import KVPool
from engine.model import Model
from engine.model_loader import load_model

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The quick brown fox jumps over the lazy dog. In summary,",
    "Q: What is the capital of France?\nA:",
]


def grove_logits(model: Model, ids: list[int]) -> torch.Tensor:
    c = model.config
    layout = KVLayout("test", "float32", 16, c.num_layers, c.num_kv_heads, c.head_dim)
    pool = KVPool(layout, -(-len(ids) // 16))
    batch = plan_batch([SeqInput(ids, 0, list(range(pool.num_blocks)), logits="all")], 16)
    return model.run(batch, pool)


def check_against_hf(model_dir: Path, hf: Any, tokenizer: Any) -> None:
    model = load_model(model_dir, get_backend("torch"))
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        ours = grove_logits(model, ids)
        with torch.inference_mode():
            ref = hf(torch.tensor([ids])).logits[0].float()
        diff = (ours - ref).abs().max().item()
        assert diff <= 1e-3, f"max abs logit difference {diff:.2e} on {text!r}"
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_smollm2_logits_match_transformers(model_dir: Path, hf_model: Any, tokenizer: Any) -> None:
    check_against_hf(model_dir, hf_model, tokenizer)


def test_qwen2_logits_match_transformers(qwen_dir: Path) -> None:
    """qwen2 (q/k/v biases, untied lm_head, 14:2 GQA): not SmolLM-only code."""
    from transformers import AutoModelForCausalLM

    from engine.tokenizer import load_tokenizer

    hf = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    assert not hf.config.tie_word_embeddings
    check_against_hf(qwen_dir, hf, load_tokenizer(qwen_dir))

"""Grove's model code gives transformers' logits on real models (fp32, max abs diff <= 1e-3; bf16 as
close to fp32 as transformers' bf16)."""
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


def _bf16_errors(model_dir: Path, hf32: Any, tokenizer: Any) -> tuple[float, float, float]:
    """Max abs logit error against transformers in fp32, of Grove in bf16 (its CPU serving path:
    packed products where the CPU has AVX512-BF16) and of transformers in bf16; and the share of
    positions where Grove's bf16 argmax is transformers' fp32 argmax."""
    from transformers import AutoModelForCausalLM

    model = load_model(model_dir, get_backend("auto"), dtype=torch.bfloat16)  # head_dim 64 in both models
    hf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    ours_err = hf_err = 0.0
    agree = total = 0
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        c = model.config
        pool = KVPool(KVLayout("test", "bfloat16", 16, c.num_layers, c.num_kv_heads, c.head_dim), -(-len(ids) // 16))
        ours = model.run(plan_batch([SeqInput(ids, 0, list(range(pool.num_blocks)), logits="all")], 16), pool)
        with torch.inference_mode():
            ref = hf32(torch.tensor([ids])).logits[0].float()
            theirs = hf16(torch.tensor([ids])).logits[0].float()
        ours_err = max(ours_err, (ours - ref).abs().max().item())
        hf_err = max(hf_err, (theirs - ref).abs().max().item())
        agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        total += len(ids)
    return ours_err, hf_err, agree / total


def test_bf16_is_as_accurate_as_transformers_bf16(model_dir: Path, hf_model: Any, tokenizer: Any, qwen_dir: Path) -> None:
    """bf16 serving (Grove's packed products and fused norms, the qwen2 biases and untied head
    included) stays as close to the fp32 logits as transformers' own bf16 forward does."""
    from transformers import AutoModelForCausalLM

    from engine.tokenizer import load_tokenizer

    qwen32 = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    for path, hf32, tok in ((model_dir, hf_model, tokenizer), (qwen_dir, qwen32, load_tokenizer(qwen_dir))):
        ours, theirs, agree = _bf16_errors(path, hf32, tok)
        assert ours <= 1.5 * theirs + 0.05, f"{path.name}: Grove bf16 max logit error {ours:.3f}, transformers bf16 {theirs:.3f}"
        assert agree >= 0.9, f"{path.name}: Grove bf16 argmax matches fp32 on {agree:.0%} of positions"

"""Real PEFT LoRA adapters of the bundled model for the tests, and PEFT's own greedy outputs with
them (the reference Grove's must equal)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(model_dir: Path, out: Path, seed: int, r: int = 8, alpha: float = 16,
                 targets: Sequence[str] = ALL_MODULES, b_scale: float = 0.3, **config: Any) -> Path:
    """A LoRA adapter with random weights (PEFT's non-zero init, B scaled by ``b_scale`` so that it
    changes the answers without drowning the model), saved as PEFT saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                            init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    model.save_pretrained(out)
    return out


def peft_greedy(model_dir: Path, adapter: Path | None, prompts: Sequence[Sequence[int]],
                max_new_tokens: int) -> list[list[int]]:
    """transformers ``generate`` (greedy) through PEFT with ``adapter`` (None: the base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    outs = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([list(ids)]), max_new_tokens=max_new_tokens, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            outs.append(out[0, len(ids):].tolist())
    return outs


def peft_last_hidden(model_dir: Path, adapter: Path | None, ids: Sequence[int]) -> torch.Tensor:
    """The final-norm hidden state of the last token through PEFT with ``adapter``, normalised
    (the embeddings API's default pooling)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval().base_model.model
    with torch.no_grad():
        last = model.model(torch.tensor([list(ids)])).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(last, dim=0)

"""Tokenizer loading, chat templates and prompt validation (shared by the gateway and the engine)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from engine.errors import InvalidRequestError


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def apply_chat_template(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """OpenAI-style messages -> prompt token ids, with the generation prompt appended."""
    if not messages:
        raise InvalidRequestError("messages", "must contain at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise InvalidRequestError(f"messages[{i}].role", "must be one of system, user, assistant, tool")
        if not isinstance(m.get("content"), str):
            raise InvalidRequestError(f"messages[{i}].content", "must be a string")
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def validate_prompt(prompt_ids: Sequence[int], vocab_size: int, max_model_len: int) -> None:
    if len(prompt_ids) == 0:
        raise InvalidRequestError("prompt", "must not be empty")
    if len(prompt_ids) >= max_model_len:
        raise InvalidRequestError(
            "prompt", f"has {len(prompt_ids)} tokens; the model's context length is {max_model_len}"
        )
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")

"""Tokenizer loading, chat templates and prompt validation (shared by the gateway and the engine)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from engine.errors import InvalidRequestError


def load_tokenizer(model_dir: str | Path) -> Any:
    """The tokenizer class the model's tokenizer_config.json names, loaded directly. AutoTokenizer
    gives the same class but first reads the model's config, whose import pulls in torch._dynamo:
    ~5 s of every gateway's and worker's start (0.5 s this way)."""
    import transformers

    name = _tokenizer_class(Path(model_dir))
    cls = getattr(transformers, name, None) if name else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        cls = transformers.AutoTokenizer
    return cls.from_pretrained(str(model_dir))


def _tokenizer_class(model_dir: Path) -> str | None:
    try:
        with open(model_dir / "tokenizer_config.json", encoding="utf-8") as f:
            name = json.load(f).get("tokenizer_class")
    except (OSError, ValueError):
        return None
    return name if isinstance(name, str) and name.isidentifier() else None


def apply_chat_template(tokenizer: Any, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                        continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
                        tools: list[dict[str, Any]] | None = None, add_special_tokens: bool = False) -> list[int]:
    """OpenAI-style messages -> prompt token ids, with the generation prompt appended (vLLM's
    options: ``continue_final_message`` leaves the last (assistant) message open for the model to
    go on with; ``template_kwargs`` are handed to the template, e.g. a model's thinking switch;
    ``tools``: OpenAI's tool list, for a template that renders them; ``add_special_tokens``: the
    tokenizer's own (a BOS) added to the rendered text too, as vLLM does; the template has its own)."""
    if add_generation_prompt and continue_final_message:
        raise InvalidRequestError("continue_final_message", "cannot be combined with add_generation_prompt")
    if continue_final_message and messages and messages[-1].get("role") != "assistant":
        raise InvalidRequestError("continue_final_message", "the last message must be the assistant's")
    if not messages:
        raise InvalidRequestError("messages", "must contain at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise InvalidRequestError(f"messages[{i}].role", "must be one of system, user, assistant, tool")
        if not isinstance(m.get("content"), str):
            raise InvalidRequestError(f"messages[{i}].content", "must be a string")
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                        continue_final_message=continue_final_message, tokenize=not add_special_tokens,
                                        tools=tools, **(template_kwargs or {}))
    if add_special_tokens:  # (tokenize=True encodes the rendered text without them)
        out = tokenizer(out, add_special_tokens=True)["input_ids"]
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def bad_word_ids(tokenizer: Any, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """vLLM's ``bad_words`` as token sequences: each word as it reads at the start of the text and,
    where it is another sequence of as many tokens, after a space (" word"), as vLLM tokenizes them."""
    out: list[tuple[int, ...]] = []
    for word in words:
        bare = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        out.append(bare)
        if len(spaced) == len(bare) and spaced[0] != bare[0]:
            out.append(spaced)
    return tuple(out)


def validate_prompt(prompt_ids: Sequence[int], vocab_size: int, max_model_len: int) -> None:
    if len(prompt_ids) == 0:
        raise InvalidRequestError("prompt", "must not be empty")
    if len(prompt_ids) >= max_model_len:
        raise InvalidRequestError(
            "prompt", f"has {len(prompt_ids)} tokens; the context length is {max_model_len}"
        )
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")

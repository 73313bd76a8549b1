"""Tokenizer loading, chat templates and prompt validation (shared by the gateway and the engine)."""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Sequence

import jinja2

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
                        tools: list[dict[str, Any]] | None = None, add_special_tokens: bool = False,
                        chat_template: str | None = None, documents: list[dict[str, str]] | None = None) -> list[int]:
    """OpenAI-style messages -> prompt token ids, with the generation prompt appended (vLLM's
    options: ``continue_final_message`` leaves the last (assistant) message open for the model to
    go on with; ``template_kwargs`` are handed to the template, e.g. a model's thinking switch;
    ``tools``: OpenAI's tool list, for a template that renders them; ``add_special_tokens``: the
    tokenizer's own (a BOS) added to the rendered text too, as vLLM does; the template has its own;
    ``chat_template``: a template of the caller's instead of the tokenizer's; ``documents``: for a
    template that renders retrieved documents)."""
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
    try:
        out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                            continue_final_message=continue_final_message,
                                            tokenize=not add_special_tokens, tools=tools, chat_template=chat_template,
                                            documents=documents, **(template_kwargs or {}))
    except Exception as e:  # a template that does not parse, or one that raises on these messages
        if chat_template is None and not isinstance(e, jinja2.TemplateError):
            raise  # the server's own template broke: not the request's fault
        raise InvalidRequestError("chat_template" if chat_template is not None else "messages",
                                  f"the chat template failed: {type(e).__name__}: {e}") from None
    if add_special_tokens:  # (tokenize=True encodes the rendered text without them)
        out = tokenizer(out, add_special_tokens=True)["input_ids"]
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def read_chat_template(value: str) -> str:
    """A ``--chat-template`` as vLLM reads it: a file's text, else the value itself if it looks like a
    template (it has one of ``{}`` or a newline; backslash escapes such as ``\\n`` are read). Raises
    ValueError for a path that cannot be read or a template that does not parse."""
    try:
        text = Path(value).read_text(encoding="utf-8")
    except OSError as e:
        if not any(c in value for c in "{}\n"):
            raise ValueError(f"chat template {value!r} looks like a file path, but it cannot be read: {e}") from None
        text = codecs.decode(value.encode("latin-1", "backslashreplace"), "unicode_escape") if "\\" in value else value
    from transformers.utils.chat_template_utils import _compile_jinja_template  # what renders it, pinned

    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template {value!r} does not parse: {e}") from None
    return text


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

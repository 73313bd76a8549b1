"""Real prompts for end-to-end checks: HumanEval completions and ShareGPT first turns (chat template)."""
from __future__ import annotations

from typing import Any

from bench.datasets.code_edit import code_edit_prompts
from bench.datasets.humaneval import completion_prompts
from bench.datasets.sharegpt import first_turn_prompts
from engine.tokenizer import apply_chat_template


def _short_chats(tokenizer: Any, n: int, max_prompt_tokens: int) -> list[list[int]]:
    out = []
    for p in first_turn_prompts():
        ids = apply_chat_template(tokenizer, p.openai_messages())
        if len(ids) <= max_prompt_tokens:
            out.append(ids)
        if len(out) == n:
            break
    return out


def engine_prompts(tokenizer: Any, n_code: int = 5, n_chat: int = 5, max_prompt_tokens: int = 200) -> list[list[int]]:
    """n_code HumanEval completion prompts + n_chat short ShareGPT chat prompts, as token ids."""
    code = [tokenizer(p.text)["input_ids"] for p in completion_prompts()[:n_code]]
    return code + _short_chats(tokenizer, n_chat, max_prompt_tokens)


def code_edit_ids(tokenizer: Any, n: int) -> list[list[int]]:
    return [apply_chat_template(tokenizer, p.openai_messages()) for p in code_edit_prompts()[:n]]

"""Shared-prefix multi-turn conversations from ShareGPT: what a prefix cache is for.

Turn t of a session resends the shared system prompt, every earlier turn (the dataset's own
assistant replies, so requests do not depend on the model's outputs) and the next user message;
its prompt therefore extends turn t-1's prompt, and every session shares the system prompt.
"""
from __future__ import annotations

from pathlib import Path

from bench.datasets.sharegpt import iter_records, turns
from bench.records import Message, Prompt

MAX_TURNS = 4

SYSTEM_PROMPT = (
    "You are a helpful, patient assistant in a long-running conversation. Read the whole "
    "conversation before answering, keep answers consistent with what you said earlier, "
    "say so when you are unsure, prefer short concrete answers with examples, and format "
    "code in fenced blocks with the language named."
)


def session_prompts(conversation: list[tuple[str, str]], session: str, max_turns: int = MAX_TURNS) -> list[Prompt]:
    """One prompt per user turn (up to ``max_turns``); turn t carries the turns before it."""
    system: tuple[Message, ...] = (("system", SYSTEM_PROMPT),)
    out = []
    for t in range(min(max_turns, (len(conversation) + 1) // 2)):
        history = tuple(conversation[: 2 * t + 1])  # user, assistant, ..., user
        out.append(Prompt(id=f"{session}#t{t}", messages=system + history, session=session, turn=t))  # type: ignore[arg-type]
    return out


def multiturn_prompts(path: Path | None = None, max_turns: int = MAX_TURNS) -> list[Prompt]:
    """Every ShareGPT conversation with at least two user turns, as sessions of prompts."""
    prompts: list[Prompt] = []
    for record in iter_records(path):
        conversation = turns(record)
        if len(conversation) >= 3:  # user, assistant, user: at least two user turns
            prompts.extend(session_prompts(conversation, f"multiturn/{record.get('id')}", max_turns))
    return prompts

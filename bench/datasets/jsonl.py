"""Users' own prompts: one JSON object a line.

Each line holds ``prompt`` (a string: a completion request) or ``messages`` (OpenAI chat
messages), and optionally ``id``, ``max_tokens``, ``session`` and ``turn`` (turns of a session
are sent in order, each after the previous one finished).
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.records import Prompt

_ROLES = ("system", "user", "assistant")


def _parse(obj: object, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    common = dict(
        id=str(obj.get("id", where)),
        session=None if obj.get("session") is None else str(obj["session"]),
        turn=int(obj.get("turn", 0)),
        max_tokens=None if obj.get("max_tokens") is None else int(obj["max_tokens"]),
    )
    if isinstance(obj.get("prompt"), str):
        return Prompt(text=obj["prompt"], **common)  # type: ignore[arg-type]
    messages = obj.get("messages")
    if isinstance(messages, list) and messages:
        parsed = []
        for m in messages:
            if not (isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)):
                raise ValueError(f"{where}: each message needs a role in {_ROLES} and string content")
            parsed.append((m["role"], m["content"]))
        return Prompt(messages=tuple(parsed), **common)  # type: ignore[arg-type]
    raise ValueError(f"{where}: needs a string 'prompt' or a non-empty 'messages' list")


def jsonl_prompts(path: str | Path) -> list[Prompt]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                where = f"{Path(path).name}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not JSON ({e})") from e
                prompts.append(_parse(obj, where))
    return prompts

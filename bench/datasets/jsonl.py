"""Users' own prompts: one JSON object a line.

Each line holds ``prompt`` (a string: a completion request) or ``messages`` (OpenAI chat
messages), and optionally ``id``, ``max_tokens``, ``session`` and ``turn`` (turns of a session
are sent in order, each after the previous one finished) and ``prediction`` (the text the answer
is expected to repeat: OpenAI's Predicted Outputs).

``python -m bench.datasets.jsonl DATASET COUNT OUT`` writes a dataset's first COUNT prompts in this
form, for a machine without the dataset packages (a lent GPU: scripts/gpu_lookahead.sh).
"""
from __future__ import annotations

import argparse
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
        prediction=None if obj.get("prediction") is None else str(obj["prediction"]),
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


def prompt_record(prompt: Prompt) -> dict[str, object]:
    """The JSON object ``_parse`` reads back as ``prompt``."""
    obj: dict[str, object] = {"id": prompt.id}
    if prompt.text is not None:
        obj["prompt"] = prompt.text
    else:
        obj["messages"] = prompt.openai_messages()
    if prompt.session is not None:
        obj["session"], obj["turn"] = prompt.session, prompt.turn
    if prompt.max_tokens is not None:
        obj["max_tokens"] = prompt.max_tokens
    if prompt.prediction is not None:
        obj["prediction"] = prompt.prediction
    return obj


def write_prompts(path: str | Path, prompts: list[Prompt]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(prompt_record(p)) + "\n")


def main() -> None:
    from bench.datasets import load_prompts  # the package imports this module

    ap = argparse.ArgumentParser(description="write a dataset's first prompts as jsonl")
    ap.add_argument("dataset")
    ap.add_argument("count", type=int)
    ap.add_argument("out")
    args = ap.parse_args()
    write_prompts(args.out, load_prompts(args.dataset)[:args.count])


if __name__ == "__main__":
    main()

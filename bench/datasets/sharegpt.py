"""ShareGPT: real chat traffic. The packaged file is cut off mid-record, so it is read one record at a time."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from bench.datasets.files import sharegpt_path
from bench.records import Prompt

logger = logging.getLogger(__name__)

_CHUNK_CHARS = 1 << 22
_SEPARATORS = " \t\r\n,"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "chatgpt", "bing", "bard", "assistant")


def iter_records(path: Path | None = None, chunk_chars: int = _CHUNK_CHARS) -> Iterator[dict[str, Any]]:
    """Yield the top-level array's objects one by one; stop quietly at a truncated tail.

    Reads in chunks so a caller that stops early never parses the whole 125 MB file.
    """
    decoder = json.JSONDecoder()
    with open(path or sharegpt_path(), encoding="utf-8") as f:
        buf = f.read(chunk_chars).lstrip()
        if not buf.startswith("["):
            raise ValueError("ShareGPT file does not start with a JSON array")
        pos = 1
        while True:
            while pos < len(buf) and buf[pos] in _SEPARATORS:
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                # Either the record continues past the buffer, or the file ends mid-record.
                more = f.read(chunk_chars)
                if not more:
                    if buf[pos:].strip():
                        logger.info("ShareGPT: ignoring a truncated record at the end of the file")
                    return
                buf, pos = buf[pos:] + more, 0
                continue
            pos = end
            if isinstance(obj, dict):
                yield obj


def turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The conversation as alternating (user, assistant, user, ...) turns, starting with the user.

    Stops at the first message that breaks the alternation or is empty: what follows cannot be
    replayed as one coherent conversation.
    """
    out: list[tuple[str, str]] = []
    for message in record.get("conversations") or []:
        if not isinstance(message, dict):
            break
        speaker, value = message.get("from"), message.get("value")
        want_user = len(out) % 2 == 0
        roles = HUMAN_ROLES if want_user else ASSISTANT_ROLES
        if speaker not in roles or not isinstance(value, str) or not value.strip():
            break
        out.append(("user" if want_user else "assistant", value))
    return out


def first_turn_prompts(path: Path | None = None) -> list[Prompt]:
    """The first user turn of every conversation that starts with one (chat prompts)."""
    prompts = []
    for record in iter_records(path):
        conversation = turns(record)
        if conversation:
            prompts.append(Prompt(id=f"sharegpt/{record.get('id')}", messages=(conversation[0],)))
    return prompts

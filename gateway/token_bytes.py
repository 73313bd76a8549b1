"""A token's own bytes, as OpenAI's logprobs give them (``bytes``)."""
from __future__ import annotations

import re
from typing import Any


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character standing for each byte -> that byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenBytes:
    """A token's own bytes, as OpenAI's logprobs give them (``bytes``): a token may be part of a
    character, which its text cannot show. Exact for byte-level BPE (GPT-2, Llama 3, Qwen2) and
    SentencePiece byte-fallback tokens; otherwise the UTF-8 of the token's piece, "▁" as a space."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._alphabet = _byte_level_alphabet() if "ByteLevel" in repr(decoder) else None
        self._cache: dict[int, list[int]] = {}

    def __call__(self, token_id: int) -> list[int]:
        got = self._cache.get(token_id)
        if got is None:
            got = self._cache[token_id] = self._bytes(self.tokenizer.convert_ids_to_tokens(token_id))
        return got

    def _bytes(self, piece: str) -> list[int]:
        if self._alphabet is not None and all(ch in self._alphabet for ch in piece):
            return [self._alphabet[ch] for ch in piece]
        m = _BYTE_FALLBACK.fullmatch(piece)
        if m is not None:
            return [int(m.group(1), 16)]
        return list(piece.replace("▁", " ").encode())

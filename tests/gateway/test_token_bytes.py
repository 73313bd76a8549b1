"""A token's own bytes (OpenAI's logprobs ``bytes``), with the bundled byte-level BPE tokenizer."""
from __future__ import annotations

from pathlib import Path

from engine.tokenizer import load_tokenizer
from gateway.token_bytes import TokenBytes


def test_the_bytes_of_a_texts_tokens_join_to_the_text(model_dir: Path) -> None:
    """Exact where a token is part of a character (an emoji's four bytes over two tokens), where
    decoding a lone token gives only U+FFFD."""
    tok = load_tokenizer(model_dir)
    text = " Paris café 😀 naïve\n\tx"
    ids = tok(text)["input_ids"]
    token_bytes = TokenBytes(tok)
    assert b"".join(bytes(token_bytes(i)) for i in ids) == text.encode()
    partial = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert partial and all(token_bytes(i) for i in partial)
    assert token_bytes(ids[0]) == list(b" Paris")

"""A token's own bytes (OpenAI's logprobs ``bytes``), with the bundled byte-level BPE tokenizer."""
from __future__ import annotations

from pathlib import Path

from engine.tokenizer import load_tokenizer
from gateway.token_names import TokenNames
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


def test_logprobs_name_a_token_by_its_text_alone(model_dir: Path) -> None:
    """As OpenAI and vLLM name them: " Paris", not the byte-level piece "ĠParis"; token_id:<id> on
    request."""
    tok = load_tokenizer(model_dir)
    ids = tok(" Paris café")["input_ids"]
    names = TokenNames(tok)
    assert tok.convert_ids_to_tokens(ids) == ["ĠParis", "ĠcafÃ©"]
    assert [names.name(i) for i in ids] == [" Paris", " café"]
    assert TokenNames(tok, as_ids=True).name(ids[0]) == f"token_id:{ids[0]}"


class _SentencePieceLike:
    """A SentencePiece tokenizer's two calls as Llama 2's answers them: decode drops the space that
    a text's first piece marks with "▁"."""

    def decode(self, ids: list[int]) -> str:
        return {1: "world", 2: "x", 3: "\n"}[ids[0]]

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return {1: "\u2581world", 2: "x", 3: "<0x0A>"}[token_id]


def test_a_sentencepiece_tokens_leading_space_is_given_back() -> None:
    names = TokenNames(_SentencePieceLike())
    assert [names.name(i) for i in (1, 2, 3)] == [" world", "x", "\n"]


def test_top_logprobs_keep_the_likelier_of_two_tokens_with_one_name(model_dir: Path) -> None:
    """Two parts of characters both decode to U+FFFD: completions' top_logprobs, a dict by name,
    keeps the likelier one's logprob (the list comes likeliest first)."""
    tok = load_tokenizer(model_dir)
    partial = [i for i in tok(" 😀 😎")["input_ids"] if tok.decode([i]) == "\ufffd"]
    names = TokenNames(tok)
    assert len(set(partial)) >= 2
    a, b = sorted(set(partial))[:2]
    assert names.top([a, b], [-1.0, -2.0]) == {"\ufffd": -1.0}
    ids = tok(" Paris café")["input_ids"]
    assert names.top(ids, [-0.5, -3.0]) == {" Paris": -0.5, " café": -3.0}

"""How logprobs name tokens (OpenAI's and vLLM's shapes): each token's text, or its id on request,
with its bytes."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from engine.request import TokenOut
from gateway.token_bytes import TokenBytes


class TokenNames:
    """How logprobs name tokens: each token's text decoded alone (" sky", not the piece "Ġsky"), as
    OpenAI and vLLM name them, or with vLLM's ``return_tokens_as_token_ids`` "token_id:<id>" (a
    token that is part of a character has no text of its own: it decodes to U+FFFD); each entry
    also has the token's bytes, as OpenAI's do."""

    def __init__(self, tokenizer: Any, as_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}
        self.name: Callable[[int], str] = self.text if not as_ids else "token_id:{}".format
        self.bytes = TokenBytes(tokenizer)

    def text(self, token_id: int) -> str:
        """The token decoded alone, with the leading spaces a SentencePiece tokenizer's decode drops
        from a text's start given back (its piece's "▁" marks: "▁world" is " world"), as vLLM does."""
        got = self._texts.get(token_id)
        if got is None:
            got = self.tokenizer.decode([token_id])
            piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
            missing = (len(piece) - len(piece.lstrip("\u2581"))) - (len(got) - len(got.lstrip(" ")))
            got = self._texts[token_id] = " " * missing + got if missing > 0 else got
        return got

    def top(self, ids: Sequence[int], logprobs: Sequence[float]) -> dict[str, float]:
        """Completions' top_logprobs, keyed by name, likeliest first: where two tokens share a name
        (two parts of characters both decode to U+FFFD) the likelier one's logprob is kept."""
        out: dict[str, float] = {}
        for i, lp in zip(ids, logprobs):
            out.setdefault(self.name(i), lp)
        return out

    def entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": self.name(token_id), "logprob": logprob, "bytes": self.bytes(token_id)}

    def content(self, tokens: Sequence[TokenOut]) -> list[dict[str, Any]]:
        """Chat's ``logprobs.content`` (and the Responses API's ``logprobs``): per token, itself
        and its top alternatives."""
        return [{**self.entry(t.token_id, t.logprob),
                 "top_logprobs": [self.entry(i, lp) for i, lp in zip(t.top_ids, t.top_logprobs)]} for t in tokens]

"""vLLM's ``allowed_token_ids`` and ``bad_words``: which tokens a request's rows may sample.

Both are applied to each sampling row on its own, so a lookahead tree stays exact: allowed tokens
are the same for every row; a bad word's last token is banned in a row whose tokens before it (the
output so far, then the draft path to the row) end with the rest of the word.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from engine.sampling_params import SamplingParams
from engine.structured import words
from engine.tokenizer import bad_word_ids


@dataclass(frozen=True, slots=True)
class TokenRules:
    # [1, ceil(V / 32)] int32 bitmask of the tokens that may be sampled (bit set), None: any token
    allowed: torch.Tensor | None
    bad_words: tuple[tuple[int, ...], ...]  # token sequences the output must not end with
    longest: int  # the longest bad word's tokens (0 if none)

    @classmethod
    def build(cls, params: SamplingParams, tokenizer: Any, vocab_size: int) -> "TokenRules | None":
        if not params.allowed_token_ids and not params.bad_words:
            return None
        bad = bad_word_ids(tokenizer, params.bad_words)
        allowed = token_bitmask(params.allowed_token_ids, vocab_size) if params.allowed_token_ids else None
        return cls(allowed, bad, max((len(w) for w in bad), default=0))

    def banned(self, before: Sequence[int]) -> list[int]:
        """The tokens a row may not sample after ``before`` (the output's tokens ahead of the row's
        position; only its last ``longest - 1`` are read): each bad word's last token where the
        tokens before end with the rest of the word."""
        out = []
        for w in self.bad_words:
            k = len(w) - 1
            if k == 0 or (len(before) >= k and tuple(before[len(before) - k:]) == w[:-1]):
                out.append(w[-1])
        return out

    def row_bans(self, output_ids: Sequence[int], paths: Sequence[Sequence[int]] | None) -> list[list[int]]:
        """Each sampling row's banned tokens: a plain decode's one row (``paths`` None) reads the
        output; a tree's row i the output, then ``paths[i]``, the drafts on the path to node i
        (engine.lookahead.tree.node_paths)."""
        tail = list(output_ids[max(0, len(output_ids) - self.longest + 1):]) if self.longest > 1 else []
        if paths is None:
            return [self.banned(tail)]
        return [self.banned(tail + list(path)) for path in paths]


def token_bitmask(ids: Sequence[int], vocab_size: int) -> torch.Tensor:
    """[1, ceil(V / 32)] int32: bit (t % 32) of word t // 32 set for each token t in ``ids``
    (xgrammar's layout, engine.structured.apply_bitmask)."""
    bits = torch.zeros(words(vocab_size) * 32, dtype=torch.int64)
    bits[torch.tensor(sorted(set(ids)), dtype=torch.long)] = 1
    packed = (bits.view(-1, 32) << torch.arange(32, dtype=torch.int64)).sum(dim=-1)  # [words] in [0, 2^32)
    return packed.to(torch.int32)[None, :]  # int64 -> int32 keeps the low 32 bits: bit 31 becomes the sign

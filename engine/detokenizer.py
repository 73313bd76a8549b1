"""Incremental detokenization and stop-condition checks for one sequence.

Text is produced with a sliding window over the ids (as vLLM does) so each step decodes a few
tokens, not the whole output. With stop strings, the last ``max_stop_len - 1`` characters are held
back from streaming until they cannot start a stop string.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

from engine.sampling_params import SamplingParams

try:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend
except ImportError:  # another transformers layout: every tokenizer goes through its own decode
    TokenizersBackend = None

FinishReason = Literal["stop", "length", "abort", "error"]

_WINDOW = 6  # tokens of left context used to decode the next piece correctly


def text_decoder(tokenizer: Any, skip_special_tokens: bool) -> Callable[[Sequence[int]], str]:
    """ids -> text, as ``tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)``.

    For a transformers tokenizer backed by the Rust ``tokenizers`` library whose class keeps the
    backend's own ``_decode``, that is the Rust tokenizer's ``decode`` alone: called directly, it
    skips transformers' argument handling, ~11 -> ~4.5 us a call for the bundled tokenizer (two
    calls a generated token, every sequence of every step). Any other tokenizer goes through its
    ``decode``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if TokenizersBackend is not None and backend is not None and type(tokenizer)._decode is TokenizersBackend._decode:
        rust_decode = backend.decode
        return lambda ids: rust_decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


class Detokenizer:
    def __init__(self, tokenizer: Any, params: SamplingParams, eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.ids: list[int] = []
        self.text = ""  # full output text (after stop-string truncation once finished)
        # vLLM's stop_reason, once "stop" finished it: the stop string matched, or the stop_token_ids
        # token; None for the model's own end-of-sequence token
        self.stop_reason: str | int | None = None
        self.emitted = 0  # characters of text already handed out
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text
        # the tokens that end the sequence (the sampler bans them within min_tokens)
        self.stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else frozenset(eos_ids))
        self._hold = max((len(s) for s in params.stop), default=1) - 1
        self._decode = text_decoder(tokenizer, params.skip_special_tokens)

    def append(self, token: int) -> FinishReason | None:
        """Adds one generated token; returns why the sequence finished, if it did."""
        self.ids.append(token)
        if token in self.stop_ids and len(self.ids) > self.params.min_tokens:
            self.stop_reason = token if token in self.params.stop_token_ids else None
            return "stop"
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.text += delta
            self._prefix = max(self._read - _WINDOW, 0) if self._read - self._prefix > _WINDOW else self._prefix
            self._read = len(self.ids)
            if self.params.stop and len(self.ids) >= self.params.min_tokens:  # vLLM's rule for strings
                start = max(len(self.text) - len(delta) - self._hold, 0)
                # (where it starts, where it ends) of each stop string found; the first to start wins
                hits = [(i, i + len(s), s) for s in self.params.stop if (i := self.text.find(s, start)) >= 0]
                if hits:
                    begin, end, self.stop_reason = min(hits)
                    self.text = self.text[: end if self.params.include_stop_str_in_output else begin]
                    return "stop"
        if len(self.ids) >= self.params.max_tokens:
            return "length"
        return None

    def take_delta(self, finished: bool) -> str:
        """Text not yet handed out; while running, keeps back what may start a stop string."""
        end = len(self.text) if finished else max(len(self.text) - self._hold, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

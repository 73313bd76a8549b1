"""Per-request sampling parameters, validated at the boundary with errors that name the field."""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidRequestError
from engine.structured import StructuredSpec

MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for one token's bias
INT32 = 2**31  # counts and token ids travel as int32 (protos/grove/v1/api.proto)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # top-n logprobs per token (0: only the chosen token's)
    lookahead: bool | None = None  # per-request switch; None: the server's default
    min_tokens: int = 0  # vLLM's: no EOS, stop token or stop string before this many output tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, added to its logit), by id
    include_stop_str_in_output: bool = False  # vLLM's: the text keeps the stop string that ended it
    skip_special_tokens: bool = True  # vLLM's: special tokens (EOS, chat markers) left out of the text
    structured: StructuredSpec | None = None  # a grammar every output token must follow (engine.structured)
    prompt_logprobs: int | None = None  # top-n logprobs of each prompt token (0: only its own); no prefix reuse
    allowed_token_ids: tuple[int, ...] = ()  # vLLM's: only these tokens may be sampled (empty: any)
    bad_words: tuple[str, ...] = ()  # vLLM's: words the output never ends with (engine.tokenizer.bad_word_ids)
    # OpenAI's Predicted Outputs: token ids the output is expected to repeat; lookahead drafts from
    # them too (engine.lookahead.drafter), the output is the model's either way
    prediction: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise InvalidRequestError(name, msg)

        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens < INT32:
            bad("max_tokens", f"must be an integer from 1 to {INT32 - 1}, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            bad("temperature", f"must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not -1 <= self.top_k < INT32:
            bad("top_k", f"must be -1, 0 (disabled) or a positive 32-bit integer, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0.0:
            bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            bad("logprobs", f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
            bad("prompt_logprobs", f"must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            bad("seed", "must fit in 64 bits")
        if any(not s for s in self.stop):
            bad("stop", "stop strings must be non-empty")
        for name, ids in (("stop_token_ids", self.stop_token_ids), ("logit_bias", [t for t, _ in self.logit_bias]),
                          ("allowed_token_ids", self.allowed_token_ids), ("prediction", self.prediction)):
            if any(not 0 <= t < INT32 for t in ids):
                bad(name, f"token ids must be in [0, {INT32})")
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            bad("min_tokens", f"must be an integer from 0 to max_tokens ({self.max_tokens}), got {self.min_tokens!r}")
        if self.structured is not None and self.min_tokens:
            bad("min_tokens", "cannot be combined with structured output (the grammar decides where the output ends)")
        if self.allowed_token_ids and self.structured is not None:
            bad("allowed_token_ids", "cannot be combined with structured output (the grammar decides the tokens)")
        if any(not w.strip() for w in self.bad_words):
            bad("bad_words", "words must have a character other than a space")
        for token, bias in self.logit_bias:
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                bad("logit_bias", f"biases must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {bias} for token {token}")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids that index the logits must lie in the model's vocabulary."""
        for name, ids in (("logit_bias", [t for t, _ in self.logit_bias]), ("allowed_token_ids", self.allowed_token_ids),
                          ("prediction", self.prediction)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise InvalidRequestError(name, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def shapes_logits(self) -> bool:
        """Something changes the logits before the pick (penalties, bias, min_tokens, a grammar,
        allowed tokens, bad words): the sampler's argmax-only shortcut does not apply."""
        return (self.has_penalties or bool(self.logit_bias) or self.min_tokens > 0 or self.structured is not None
                or bool(self.allowed_token_ids) or bool(self.bad_words))


GREEDY = SamplingParams(temperature=0.0)

"""The values every bench module passes around: prompts, prepared jobs, usage, per-request records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Role = Literal["system", "user", "assistant"]
Message = tuple[Role, str]  # (role, content); immutable so a Prompt can be frozen


@dataclass(frozen=True, slots=True)
class Prompt:
    """One dataset record, before tokenization: a completion text or a chat conversation."""

    id: str
    text: str | None = None
    messages: tuple[Message, ...] | None = None
    session: str | None = None  # turns of one session share a prefix and are sent in turn order
    turn: int = 0
    max_tokens: int | None = None  # the record's own output budget (jsonl); else the run's --max-tokens
    prediction: str | None = None  # OpenAI's Predicted Outputs: text the answer is expected to repeat (code-edit: the code)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError(f"prompt {self.id!r}: give exactly one of text and messages")

    @property
    def kind(self) -> Literal["completion", "chat"]:
        return "chat" if self.messages is not None else "completion"

    def openai_messages(self) -> list[dict[str, str]]:
        assert self.messages is not None
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True, slots=True)
class Job:
    """A prompt ready to send: its exact prompt tokens, output budget and ordering constraint."""

    index: int  # position in the run; unique within one run
    prompt: Prompt
    prompt_ids: tuple[int, ...]  # what the model sees (chat template applied for chat prompts)
    max_tokens: int
    after: int | None = None  # index of the job that must finish before this one starts (earlier turn)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Usage:
    """The OpenAI usage block; every field is None when the server did not report it."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache
    accepted_prediction_tokens: int | None = None  # lookahead draft tokens accepted
    rejected_prediction_tokens: int | None = None  # drafted but rejected

    @classmethod
    def from_openai(cls, block: Any) -> Usage:
        """Parse defensively: other servers omit fields, send nulls or nest them differently."""
        if not isinstance(block, Mapping):
            return cls()
        prompt_details = block.get("prompt_tokens_details")
        completion_details = block.get("completion_tokens_details")
        prompt_details = prompt_details if isinstance(prompt_details, Mapping) else {}
        completion_details = completion_details if isinstance(completion_details, Mapping) else {}
        return cls(
            prompt_tokens=_int_or_none(block.get("prompt_tokens")),
            completion_tokens=_int_or_none(block.get("completion_tokens")),
            cached_tokens=_int_or_none(prompt_details.get("cached_tokens")),
            accepted_prediction_tokens=_int_or_none(completion_details.get("accepted_prediction_tokens")),
            rejected_prediction_tokens=_int_or_none(completion_details.get("rejected_prediction_tokens")),
        )


@dataclass(slots=True)
class RequestRecord:
    """What one request did. Times are ``time.perf_counter()`` seconds on the bench's clock."""

    job_index: int
    prompt_id: str
    prompt_tokens: int  # tokens the bench sent (or the chat template produced locally)
    send_time: float
    end_time: float = 0.0
    # Arrival time of each streamed chunk that carried output. One chunk may carry several
    # tokens (a server with lookahead emits every accepted token of a step at once).
    chunk_times: list[float] = field(default_factory=list)
    text: str = ""
    output_ids: list[int] | None = None  # only when the server (or baseline) gave token ids
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        """Output length: the server's count when given, else the token ids, else one per chunk."""
        if self.usage.completion_tokens is not None:
            return self.usage.completion_tokens
        if self.output_ids is not None:
            return len(self.output_ids)
        return len(self.chunk_times)

    @property
    def input_tokens(self) -> int:
        return self.usage.prompt_tokens if self.usage.prompt_tokens is not None else self.prompt_tokens

"""Frozen configuration of one benchmark: what to send, how hard, against what. Parsed in cli.py."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

BASELINES = ("hf", "hf-prompt-lookup")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Closed loop (``request_rate`` None): ``concurrency`` requests always in flight.
    Open loop: arrivals at ``request_rate``/s (inf: all at once), Gamma gaps of shape
    ``burstiness`` (1 = Poisson); ``concurrency`` then caps requests in flight (None: no cap)."""

    concurrency: int | None = 1
    request_rate: float | None = None
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.request_rate is None and self.concurrency is None:
            raise ValueError("a closed-loop load needs a concurrency")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError("request rate must be positive")
        if not self.burstiness > 0:
            raise ValueError("burstiness must be positive")

    @property
    def label(self) -> str:
        if self.request_rate is None:
            return f"c={self.concurrency}"
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}"
        parts = [f"rate={rate}"]
        if self.burstiness != 1.0:
            parts.append(f"b={self.burstiness:g}")
        if self.concurrency is not None:
            parts.append(f"c<={self.concurrency}")
        return ",".join(parts)

    def to_json(self) -> dict[str, Any]:
        rate = self.request_rate
        return {"concurrency": self.concurrency, "request_rate": "inf" if rate is not None and math.isinf(rate) else rate,
                "burstiness": self.burstiness, "arrivals": None if rate is None else ("poisson" if self.burstiness == 1.0 else "gamma"),
                "label": self.label}


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request latency bounds for goodput, in ms; None = no bound on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))


@dataclass(frozen=True, slots=True)
class Target:
    """A server to benchmark. ``extra_body`` fields go into every request body (HTTP only), e.g.
    ``{"lookahead": False}``: one server can then be two targets, with and without a feature."""

    name: str
    url: str
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    dataset: str
    targets: tuple[Target, ...] = ()  # the server under test first, then --vs servers
    loads: tuple[LoadSpec, ...] = (LoadSpec(),)
    num_prompts: int = 16
    duration_s: float | None = None  # when set, send prompts (cycling) until this long has passed
    warmup: int = 1
    max_tokens: int = 128
    max_prompt_tokens: int = 2048
    seed: int | None = 0  # None keeps the dataset's order
    skip_prompts: int = 0  # sessions dropped from the front of that order (fresh prompts for a later run)
    baselines: tuple[str, ...] = ()
    prompt_lookup_num_tokens: int = 10
    torch_threads: int = 2  # for the in-process baselines
    check_greedy: bool = True  # compare server outputs with each baseline's (needs a baseline)
    slo: SLO = field(default_factory=SLO)
    model: str | None = None  # the request's "model" field; None: the server's first /v1/models entry
    tokenizer: str | None = None  # model dir for tokenizing and for baselines; None: Grove's default model
    api: Literal["auto", "completions"] = "auto"
    prompt_format: Literal["ids", "text"] = "ids"
    request_timeout_s: float = 600.0
    label: str | None = None  # scenario name, shown in tables
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.targets and not self.baselines:
            raise ValueError("nothing to run: give a server URL and/or a baseline")
        names = [t.name for t in self.targets] + list(self.baselines)
        if len(set(names)) != len(names):
            raise ValueError(f"run names must be distinct, got {names}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        if self.num_prompts < 1 or self.warmup < 0 or self.max_tokens < 1 or self.torch_threads < 1:
            raise ValueError("num_prompts, max_tokens and torch_threads must be positive, warmup non-negative")
        if self.skip_prompts < 0:
            raise ValueError("skip_prompts must be non-negative")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("duration must be positive")
        if not self.loads:
            raise ValueError("give at least one load")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["loads"] = [load.to_json() for load in self.loads]
        return out

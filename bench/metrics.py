"""Latency and throughput metrics, as pure functions of request records.

Definitions (as in ``vllm bench serve``): TTFT = first output chunk - send; E2E = end of stream -
send; TPOT = (E2E - TTFT) / (output tokens - 1); ITL = gaps between output chunks. A chunk can
carry several tokens (lookahead), so ITL is per chunk and TPOT per token; ``tokens_per_chunk``
shows the difference. Throughputs divide by the run's span: first send to last end.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from bench.config import SLO
from bench.records import RequestRecord

MS = 1000.0


class Stats(NamedTuple):
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    n: int


def stats(values: Iterable[float]) -> Stats | None:
    """Mean and percentiles (linear interpolation); None when there are no values."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return None
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return Stats(float(arr.mean()), float(p50), float(p90), float(p99), float(arr.min()), float(arr.max()), int(arr.size))


def ttft_s(r: RequestRecord) -> float | None:
    return r.chunk_times[0] - r.send_time if r.chunk_times else None


def e2e_s(r: RequestRecord) -> float:
    return r.end_time - r.send_time


def tpot_s(r: RequestRecord) -> float | None:
    ttft = ttft_s(r)
    n = r.output_tokens
    if ttft is None or n < 2:
        return None  # undefined for a single token
    return (e2e_s(r) - ttft) / (n - 1)


def itl_s(r: RequestRecord) -> list[float]:
    t = r.chunk_times
    return [b - a for a, b in zip(t, t[1:])]


def meets_slo(r: RequestRecord, slo: SLO) -> bool:
    """A failed request never meets an SLO; an undefined TPOT (one token) meets any TPOT bound."""
    if not r.ok:
        return False
    ttft, tpot = ttft_s(r), tpot_s(r)
    if slo.ttft_ms is not None and (ttft is None or ttft * MS > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and tpot is not None and tpot * MS > slo.tpot_ms:
        return False
    return not (slo.e2e_ms is not None and e2e_s(r) * MS > slo.e2e_ms)


def _sum_reported(values: Iterable[int | None]) -> int | None:
    """Sum of the values servers reported; None when none did (unknown, not zero)."""
    reported = [v for v in values if v is not None]
    return sum(reported) if reported else None


def _ms(values: Iterable[float | None]) -> Stats | None:
    return stats(v * MS for v in values if v is not None)


@dataclass(frozen=True, slots=True)
class RunMetrics:
    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (prompt + output tokens) / s
    input_tokens: int
    output_tokens: int
    ttft_ms: Stats | None
    tpot_ms: Stats | None
    itl_ms: Stats | None
    e2e_ms: Stats | None
    tokens_per_chunk: float | None  # above 1 when the server streams several tokens per step
    goodput: float | None  # requests / s meeting every SLO bound; None without an SLO
    slo_attainment: float | None  # fraction of all requests meeting the SLO
    cached_tokens: int | None  # prompt tokens served from the prefix cache (usage)
    prefix_cache_hit_rate: float | None  # cached / prompt tokens, over requests that reported it
    accepted_prediction_tokens: int | None  # lookahead draft tokens accepted (usage)
    rejected_prediction_tokens: int | None
    acceptance_rate: float | None  # accepted / (accepted + rejected)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)  # Stats (a NamedTuple) becomes a list: turn it into a dict
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            value = getattr(self, key)
            out[key] = None if value is None else value._asdict()
        return out


def summarize(records: Sequence[RequestRecord], slo: SLO = SLO()) -> RunMetrics:
    ok = [r for r in records if r.ok]
    if records:
        span = max(r.end_time for r in records) - min(r.send_time for r in records)
    else:
        span = 0.0
    per_s = (lambda x: x / span) if span > 0 else (lambda x: 0.0)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens for r in ok)
    chunks = sum(len(r.chunk_times) for r in ok)

    reporting = [r for r in ok if r.usage.cached_tokens is not None]
    cached = _sum_reported(r.usage.cached_tokens for r in ok)
    reporting_prompt = sum(r.input_tokens for r in reporting)
    accepted = _sum_reported(r.usage.accepted_prediction_tokens for r in ok)
    rejected = _sum_reported(r.usage.rejected_prediction_tokens for r in ok)
    drafted = (accepted or 0) + (rejected or 0)
    good = sum(meets_slo(r, slo) for r in records) if slo.any else None

    return RunMetrics(
        completed=len(ok), failed=len(records) - len(ok), duration_s=span,
        request_throughput=per_s(len(ok)), output_throughput=per_s(out_tokens),
        total_token_throughput=per_s(in_tokens + out_tokens), input_tokens=in_tokens, output_tokens=out_tokens,
        ttft_ms=_ms(ttft_s(r) for r in ok), tpot_ms=_ms(tpot_s(r) for r in ok),
        itl_ms=_ms(x for r in ok for x in itl_s(r)), e2e_ms=_ms(e2e_s(r) for r in ok),
        tokens_per_chunk=out_tokens / chunks if chunks else None,
        goodput=None if good is None else per_s(good),
        slo_attainment=None if good is None or not records else good / len(records),
        cached_tokens=cached,
        prefix_cache_hit_rate=cached / reporting_prompt if cached is not None and reporting_prompt else None,
        accepted_prediction_tokens=accepted, rejected_prediction_tokens=rejected,
        acceptance_rate=(accepted or 0) / drafted if drafted else None,
    )


def record_json(r: RequestRecord, t0: float) -> dict[str, Any]:
    """One request in the result file; times relative to ``t0`` (the run's start), in ms."""
    ttft, tpot = ttft_s(r), tpot_s(r)
    return {
        "index": r.job_index, "prompt_id": r.prompt_id, "ok": r.ok, "error": r.error,
        "send_offset_ms": (r.send_time - t0) * MS, "ttft_ms": None if ttft is None else ttft * MS,
        "tpot_ms": None if tpot is None else tpot * MS, "e2e_ms": e2e_s(r) * MS,
        "itl_ms": [x * MS for x in itl_s(r)], "chunks": len(r.chunk_times),
        "prompt_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "cached_tokens": r.usage.cached_tokens,
        "accepted_prediction_tokens": r.usage.accepted_prediction_tokens,
        "rejected_prediction_tokens": r.usage.rejected_prediction_tokens,
        "finish_reason": r.finish_reason, "output_text": r.text, "output_ids": r.output_ids,
    }

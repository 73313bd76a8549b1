"""``grove bench compare A.json B.json``: what changed between two results, run by run."""
from __future__ import annotations

from typing import Any, NamedTuple

from bench.report import fmt, text_table
from bench.result import metric_value

# (row name, metric, statistic, True when higher is better)
COMPARED: tuple[tuple[str, str, str | None, bool], ...] = (
    ("output tok/s", "output_throughput", None, True),
    ("requests/s", "request_throughput", None, True),
    ("goodput req/s", "goodput", None, True),
    ("TTFT p50 ms", "ttft_ms", "p50", False),
    ("TTFT p99 ms", "ttft_ms", "p99", False),
    ("TPOT mean ms", "tpot_ms", "mean", False),
    ("TPOT p99 ms", "tpot_ms", "p99", False),
    ("ITL p50 ms", "itl_ms", "p50", False),
    ("E2E p50 ms", "e2e_ms", "p50", False),
    ("E2E p99 ms", "e2e_ms", "p99", False),
    ("cache hit rate", "prefix_cache_hit_rate", None, True),
    ("acceptance rate", "acceptance_rate", None, True),
    ("failed", "failed", None, False),
)


class Diff(NamedTuple):
    run: str
    metric: str
    a: float | None
    b: float | None
    change: float | None  # (b - a) / a
    better: bool | None  # is B better than A on this metric


def diff_results(a: dict[str, Any], b: dict[str, Any]) -> list[Diff]:
    """Every compared metric of every run label present in both results."""
    runs_b = {r["label"]: r for r in b["runs"]}
    out = []
    for run_a in a["runs"]:
        run_b = runs_b.get(run_a["label"])
        if run_b is None:
            continue
        for name, metric, stat, higher_better in COMPARED:
            va, vb = metric_value(run_a, metric, stat), metric_value(run_b, metric, stat)
            change = (vb - va) / va if va and vb is not None else None
            better = None if va is None or vb is None or va == vb else (vb > va) == higher_better
            out.append(Diff(run_a["label"], name, va, vb, change, better))
    return out


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a["config"]) | set(b["config"]))
    return [f"{k}: {a['config'].get(k)!r} -> {b['config'].get(k)!r}" for k in keys if a["config"].get(k) != b["config"].get(k)]


def format_comparison(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    diffs = diff_results(a, b)
    rows = [[d.run, d.metric, fmt(d.a, ".2f"), fmt(d.b, ".2f"), fmt(d.change, "+.1%"),
             {True: "better", False: "worse", None: ""}[d.better]] for d in diffs]
    parts = [f"A = {name_a}\nB = {name_b}"]
    changes = config_changes(a, b)
    if changes:
        parts += ["config changes:", *(f"  {c}" for c in changes)]
    only_a = sorted({r["label"] for r in a["runs"]} - {r["label"] for r in b["runs"]})
    only_b = sorted({r["label"] for r in b["runs"]} - {r["label"] for r in a["runs"]})
    if only_a or only_b:
        parts.append(f"runs only in A: {only_a or '-'}; only in B: {only_b or '-'}")
    parts.append(text_table(["run", "metric", "A", "B", "change", ""], rows) if rows else "no runs in common")
    ga, gb = a["greedy_check"].get("ok"), b["greedy_check"].get("ok")
    parts.append(f"greedy check: A {ga}, B {gb}")
    return "\n".join(parts)

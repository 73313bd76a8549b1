"""The result file: one JSON document per benchmark, its run entries, ratios and validation.

Layout (schema_version 1)::

    {schema_version, tool, created_at, label, config, dataset: {name, num_prompts, prompt_tokens},
     runs: [{label, name, kind: server|baseline, backend, load, max_in_flight, metrics, requests}],
     comparisons: [{contender, baseline, ratios}], greedy_check: {enabled, ok, tie_tol, results}, plots}

Ratios are "times better" for the contender: throughputs contender/baseline, latencies
baseline/contender, so above 1 always means the contender wins.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from bench.metrics import RunMetrics, Stats, record_json
from bench.runner import RunOutput

SCHEMA_VERSION = 1
METRIC_FIELDS = tuple(f.name for f in fields(RunMetrics))
STATS_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
REQUEST_FIELDS = ("index", "prompt_id", "ok", "ttft_ms", "tpot_ms", "e2e_ms", "itl_ms", "prompt_tokens",
                  "output_tokens", "cached_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens")

# name -> (metric, statistic or None, True when higher is better)
RATIOS: dict[str, tuple[str, str | None, bool]] = {
    "output_throughput": ("output_throughput", None, True),
    "request_throughput": ("request_throughput", None, True),
    "ttft_p50": ("ttft_ms", "p50", False),
    "tpot_mean": ("tpot_ms", "mean", False),
    "itl_p50": ("itl_ms", "p50", False),
    "e2e_p50": ("e2e_ms", "p50", False),
}


def run_entry(label: str, name: str, kind: str, backend: dict[str, Any], load: dict[str, Any],
              metrics: RunMetrics, output: RunOutput) -> dict[str, Any]:
    records = sorted(output.records, key=lambda r: r.job_index)
    return {"label": label, "name": name, "kind": kind, "backend": backend, "load": load,
            "max_in_flight": output.max_in_flight, "metrics": metrics.to_json(),
            "requests": [record_json(r, output.start) for r in records]}


def metric_value(run: dict[str, Any], metric: str, stat: str | None = None) -> float | None:
    value = run["metrics"].get(metric)
    if stat is not None:
        value = value.get(stat) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


def ratios(contender: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, (metric, stat, higher_better) in RATIOS.items():
        c, b = metric_value(contender, metric, stat), metric_value(baseline, metric, stat)
        num, den = (c, b) if higher_better else (b, c)
        out[name] = num / den if num is not None and den else None
    return out


def comparisons(runs: Sequence[dict[str, Any]], first_target: str | None) -> list[dict[str, Any]]:
    """Every server run against every baseline; the first target against each other target at the same load."""
    servers = [r for r in runs if r["kind"] == "server"]
    out = []
    for s in servers:
        for b in (r for r in runs if r["kind"] == "baseline"):
            out.append({"contender": s["label"], "baseline": b["label"], "ratios": ratios(s, b)})
    for s in (r for r in servers if r["name"] == first_target):
        for other in servers:
            if other["name"] != first_target and other["load"]["label"] == s["load"]["label"]:
                out.append({"contender": s["label"], "baseline": other["label"], "ratios": ratios(s, other)})
    return out


def validate_result(doc: Any) -> list[str]:
    """Everything a result file must hold; [] when valid. Used by tests and the lead's e2e check."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["result is not a JSON object"]
    for key in ("schema_version", "config", "dataset", "runs", "comparisons", "greedy_check", "plots"):
        if key not in doc:
            problems.append(f"missing top-level field {key!r}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version is {doc.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    runs = doc.get("runs") or []
    if not runs:
        problems.append("no runs")
    for run in runs:
        where = f"run {run.get('label')!r}"
        metrics = run.get("metrics") or {}
        problems += [f"{where}: missing metric {m!r}" for m in METRIC_FIELDS if m not in metrics]
        for m in STATS_METRICS:
            if isinstance(metrics.get(m), dict):
                problems += [f"{where}: {m} lacks {s!r}" for s in Stats._fields if s not in metrics[m]]
            elif metrics.get("completed"):
                problems.append(f"{where}: {m} has no statistics although requests completed")
        requests = run.get("requests") or []
        if len(requests) != (metrics.get("completed", 0) + metrics.get("failed", 0)):
            problems.append(f"{where}: {len(requests)} request records for completed+failed")
        for r in requests[:1]:
            problems += [f"{where}: request record lacks {k!r}" for k in REQUEST_FIELDS if k not in r]
    check = doc.get("greedy_check") or {}
    for key in ("enabled", "ok", "results"):
        if key not in check:
            problems.append(f"greedy_check lacks {key!r}")
    return problems


def write_result(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def load_result(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    problems = validate_result(doc)
    if problems:
        raise ValueError(f"{path}: not a valid grove bench result: {'; '.join(problems[:5])}")
    return doc

"""``grove bench table RESULTS...``: a markdown table of many results (docs/benchmarks.md)."""
from __future__ import annotations

from typing import Any, Sequence

from bench.report import fmt
from bench.result import metric_value

HEADER = ("Scenario", "Dataset", "Run", "Load", "Req/s", "Out tok/s", "TTFT p50 ms", "TPOT mean ms",
          "E2E p50 ms", "Cache hit", "Accept", "Out tok/s vs baseline", "Greedy = HF")


def _speedups(doc: dict[str, Any], label: str) -> str:
    parts = [f"{c['ratios']['output_throughput']:.2f}x vs {c['baseline']}" for c in doc["comparisons"]
             if c["contender"] == label and c["ratios"].get("output_throughput") is not None]
    return "; ".join(parts) or "-"


def _greedy(doc: dict[str, Any], label: str) -> str:
    results = [r for r in doc["greedy_check"].get("results", []) if r["contender"] == label]
    if not results:
        return "-"
    return "yes" if all(r["ok"] for r in results) else "NO"


def rows(doc: dict[str, Any]) -> list[list[str]]:
    scenario = doc.get("label") or doc["dataset"]["name"]
    out = []
    for run in doc["runs"]:
        label = run["label"]
        out.append([scenario, doc["dataset"]["name"], run["name"], run["load"]["label"],
                    fmt(metric_value(run, "request_throughput"), ".2f"), fmt(metric_value(run, "output_throughput"), ".1f"),
                    fmt(metric_value(run, "ttft_ms", "p50"), ".0f"), fmt(metric_value(run, "tpot_ms", "mean"), ".1f"),
                    fmt(metric_value(run, "e2e_ms", "p50"), ".0f"), fmt(metric_value(run, "prefix_cache_hit_rate"), ".0%"),
                    fmt(metric_value(run, "acceptance_rate"), ".0%"), _speedups(doc, label), _greedy(doc, label)])
    return out


def markdown_table(docs: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for doc in docs:
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(doc)]
    return "\n".join(lines) + "\n"

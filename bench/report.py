"""The text summary the CLI prints after a run: metrics per run, ratios, the greedy check."""
from __future__ import annotations

from typing import Any, Sequence

from bench.result import metric_value


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


RUN_COLUMNS: tuple[tuple[str, str, str | None, str], ...] = (
    ("req/s", "request_throughput", None, ".2f"),
    ("out tok/s", "output_throughput", None, ".1f"),
    ("TTFT p50", "ttft_ms", "p50", ".1f"),
    ("TTFT p99", "ttft_ms", "p99", ".1f"),
    ("TPOT mean", "tpot_ms", "mean", ".1f"),
    ("ITL p50", "itl_ms", "p50", ".1f"),
    ("E2E p50", "e2e_ms", "p50", ".0f"),
    ("E2E p99", "e2e_ms", "p99", ".0f"),
    ("tok/chunk", "tokens_per_chunk", None, ".2f"),
    ("cache hit", "prefix_cache_hit_rate", None, ".1%"),
    ("accept", "acceptance_rate", None, ".1%"),
    ("goodput", "goodput", None, ".2f"),
)


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    header = ["run", *(c[0] for c in RUN_COLUMNS), "ok/failed"]
    rows = []
    for run in runs:
        m = run["metrics"]
        rows.append([run["label"], *(fmt(metric_value(run, key, stat), spec) for _, key, stat, spec in RUN_COLUMNS),
                     f"{m['completed']}/{m['failed']}"])
    return text_table(header, rows)


def ratios_table(comparisons: Sequence[dict[str, Any]]) -> str:
    names = list(comparisons[0]["ratios"]) if comparisons else []
    rows = [[c["contender"], c["baseline"], *(fmt(c["ratios"][n], ".2f", "x") for n in names)] for c in comparisons]
    return text_table(["contender", "baseline", *names], rows)


def greedy_lines(check: dict[str, Any]) -> list[str]:
    if not check.get("enabled"):
        return ["greedy check: off (needs a server and a --baseline)"]
    lines = []
    for r in check["results"]:
        verdict = "OK" if r["ok"] else "MISMATCH"
        lines.append(f"{r['contender']} vs {r['baseline']}: {verdict} ({r['identical']} identical, "
                     f"{r['near_tie']} near ties, {len(r['mismatches'])} mismatches of {r['checked']}; "
                     f"{r['skipped']} skipped)")
        lines += [f"    {m['prompt_id']}: {m['message']}" for m in r["mismatches"][:5]]
    return lines


def format_report(doc: dict[str, Any]) -> str:
    cfg, ds = doc["config"], doc["dataset"]
    title = f"grove bench: {doc.get('label') or ds['name']} ({ds['num_prompts']} prompts, max_tokens {cfg['max_tokens']})"
    parts = [title, "=" * len(title), "latencies in ms; throughputs per second", runs_table(doc["runs"])]
    if doc["comparisons"]:
        parts += ["", "ratios (above 1: the contender is better)", ratios_table(doc["comparisons"])]
    parts += ["", *greedy_lines(doc["greedy_check"])]
    if doc.get("plots"):
        parts += ["", "plots: " + ", ".join(doc["plots"].values())]
    return "\n".join(parts)

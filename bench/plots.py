"""PNG plots of a result document: latency CDFs and throughput against load.

Uses matplotlib's object API on the Agg canvas: no pyplot state, no display needed.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

logger = logging.getLogger(__name__)

_LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))


def _values(run: dict[str, Any], key: str) -> list[float]:
    out: list[float] = []
    for r in run["requests"]:
        if not r.get("ok"):
            continue
        v = r.get(key)
        if isinstance(v, list):
            out.extend(x for x in v if x is not None)
        elif v is not None:
            out.append(v)
    return out


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def latency_cdfs(runs: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Empirical CDFs of TTFT, TPOT, ITL and E2E, one line per run."""
    fig = Figure(figsize=(11, 8))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.93, wspace=0.2, hspace=0.25)
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, name) in zip(axes, _LATENCIES):
        for run in runs:
            xs = np.sort(np.asarray(_values(run, key)))
            if xs.size:  # the CDF rises from 0 at the smallest value to 1 at the largest
                ax.step(np.r_[xs[0], xs], np.arange(xs.size + 1) / xs.size, where="post", label=run["label"])
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests" if key != "itl_ms" else "fraction of chunk gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        lo, hi = ax.get_xlim()
        if lo > 0 and hi / lo > 50:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or "latency CDFs")
    return _save(fig, path)


def _load_x(run: dict[str, Any]) -> float:
    load = run["load"]
    if load.get("request_rate") is None:
        return float(load["concurrency"])
    rate = load["request_rate"]
    return math.inf if rate == "inf" else float(rate)


def throughput_vs_load(runs: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Output tokens/s and mean TPOT against concurrency (or request rate), one line per server;
    baselines (one load each) as dashed horizontal lines."""
    fig = Figure(figsize=(11, 4.5))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.88, wspace=0.2)
    ax_tp, ax_lat = fig.subplots(1, 2)
    servers = [r for r in runs if r["kind"] == "server"]
    open_loop = any(r["load"].get("request_rate") is not None for r in servers)
    for name in dict.fromkeys(r["name"] for r in servers):
        points = sorted((_load_x(r), r) for r in servers if r["name"] == name)
        points = [(x, r) for x, r in points if math.isfinite(x)] or points[:1]
        xs = [x if math.isfinite(x) else 0.0 for x, _ in points]
        tpot = [(r["metrics"].get("tpot_ms") or {}).get("mean") for _, r in points]
        ax_tp.plot(xs, [r["metrics"]["output_throughput"] for _, r in points], marker="o", label=name)
        ax_lat.plot(xs, [math.nan if v is None else v for v in tpot], marker="o", label=name)
    for i, base in enumerate(r for r in runs if r["kind"] == "baseline"):
        color = f"C{len(servers) + i}"
        ax_tp.axhline(base["metrics"]["output_throughput"], linestyle="--", color=color, label=base["label"])
        tpot = (base["metrics"].get("tpot_ms") or {}).get("mean")
        if tpot is not None:
            ax_lat.axhline(tpot, linestyle="--", color=color, label=base["label"])
    xlabel = "request rate (req/s)" if open_loop else "concurrency"
    ticks = sorted({x for x in map(_load_x, servers) if math.isfinite(x)})
    for ax, ylabel in ((ax_tp, "output tokens/s"), (ax_lat, "mean TPOT (ms)")):
        ax.set_xlabel(xlabel)
        if ticks:
            ax.set_xticks(ticks)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or "throughput vs load")
    return _save(fig, path)


def write_plots(doc: dict[str, Any], prefix: Path) -> dict[str, str]:
    """Both plots next to the result file: ``<prefix>_latency_cdf.png``, ``<prefix>_throughput.png``."""
    title = doc.get("label") or doc["dataset"]["name"]
    runs = doc["runs"]
    paths = {
        "latency_cdf": latency_cdfs(runs, prefix.with_name(prefix.name + "_latency_cdf.png"), f"{title}: latency CDFs"),
        "throughput": throughput_vs_load(runs, prefix.with_name(prefix.name + "_throughput.png"), f"{title}: throughput vs load"),
    }
    logger.info("plots: %s", ", ".join(str(p) for p in paths.values()))
    return {k: str(p) for k, p in paths.items()}

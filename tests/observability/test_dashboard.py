"""Every PromQL expression of the Grafana dashboard names only metrics the running stack exports."""
from __future__ import annotations

import json
import re
from typing import Any, Iterator

from launcher.stack import Stack
from tests.observability.conftest import COMPOSE, Traffic, scrape

DASHBOARD = COMPOSE / "grafana/dashboards/grove.json"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def exprs(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for p in panels:
        yield from exprs(p.get("panels", []))
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions, keywords, label
    names (in {...} matchers or by/without lists), durations or template variables."""
    text = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations and $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\"[^\"]*\"", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1) not in KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_name_extraction() -> None:
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(grove:a_bucket{x="y"}[$__rate_interval])))') \
        == {"grove:a_bucket"}
    assert metric_names("1 + sum(rate(a_total[1m])) / scalar(sum without (pos) (b))") == {"a_total", "b"}


def test_every_dashboard_metric_is_exported(stack: Stack, traffic: Traffic) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, list[str]] = {}
    for title, expr in exprs(dashboard["panels"]):
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, []).append(title)
    exported: set[str] = set()
    for _, _, address in stack.metrics_targets():
        exported |= set(scrape(address))
    missing = {name: titles for name, titles in used.items() if name not in exported}
    assert not missing, f"dashboard metrics no service exports: {missing}"
    # the list of panels is all there
    for needed in ("grove:time_to_first_token_seconds_bucket", "grove:inter_token_latency_seconds_bucket",
                   "grove:e2e_request_latency_seconds_bucket", "grove:num_requests_running",
                   "grove:num_requests_waiting", "grove:kvstore_blocks_used", "grove:prefix_cache_hits_total",
                   "grove:spec_decode_num_accepted_tokens_per_pos_total", "grove:kvstore_transfer_bytes_total",
                   "grove:request_success_total"):
        assert needed in used, needed

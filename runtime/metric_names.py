"""Metric names for tools built for vLLM: every service's ``--metrics-names`` (or
``GROVE_METRICS_NAMES``) exposes its ``grove:`` metrics as they are (``grove``, the default), under
vLLM's ``vllm:`` prefix instead (``vllm``), or under both (``both``).

Grove's metrics follow vLLM's names after the prefix (``num_requests_waiting``,
``kv_cache_usage_perc``, ``time_to_first_token_seconds``, ``lora_requests_info`` ...) and carry
vLLM's ``model_name`` label, so a Grafana dashboard, an alert, an autoscaler (KEDA on
``vllm:num_requests_waiting``) or an inference gateway's endpoint picker reading a vLLM server's
metrics reads a Grove worker's. The copies are made at scrape time from the same collection: the
two names of one series always have the same value.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

NAMES = ("grove", "vllm", "both")
ENV = "GROVE_METRICS_NAMES"
GROVE, VLLM = "grove:", "vllm:"


def add_metrics_names_arg(p: argparse.ArgumentParser) -> None:
    default = os.environ.get(ENV, "grove")
    if default not in NAMES:
        raise SystemExit(f"{ENV}={default!r}: must be one of {list(NAMES)}")
    p.add_argument("--metrics-names", choices=NAMES, default=default,
                   help="/metrics under Grove's names (grove:...), vLLM's (vllm:..., for dashboards, alerts and "
                        f"autoscalers built for vLLM) or both (default: ${ENV}, else grove)")


class _Renamed:
    """``registry``'s families, those named ``grove:...`` under ``vllm:...`` (the others as they
    are), after the originals where ``keep``."""

    def __init__(self, registry: CollectorRegistry, keep: bool) -> None:
        self.registry = registry
        self.keep = keep

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if self.keep or not family.name.startswith(GROVE):
                yield family
            if family.name.startswith(GROVE):
                yield _vllm_named(family)


def _vllm_named(family: Metric) -> Metric:
    out = Metric(VLLM + family.name[len(GROVE):], family.documentation, family.type, family.unit)
    out.samples = [s._replace(name=VLLM + s.name[len(GROVE):]) if s.name.startswith(GROVE) else s
                   for s in family.samples]
    return out


def exposed(registry: CollectorRegistry, names: str) -> CollectorRegistry:
    """The registry a service's /metrics serves for ``names`` (one of NAMES)."""
    if names not in NAMES:
        raise ValueError(f"metrics names {names!r}: must be one of {list(NAMES)}")
    if names == "grove":
        return registry
    out = CollectorRegistry(auto_describe=False)
    out.register(_Renamed(registry, keep=names == "both"))
    return out

"""Prometheus metrics read from a worker's engine at scrape time (nothing on the hot path).

Names follow vLLM's with a ``grove:`` prefix; every sample carries the worker's role and id, so the
metrics of several workers on one host never clash (each also has its own registry and port).
Counters are CounterMetricFamily: the exposition adds ``_total`` to their names.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Literal, NamedTuple, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.llm_engine import LLMEngine
from engine.lookahead.drafter import SOURCES
from engine.sequence import Sequence as Seq
from runtime.metric_names import exposed
from runtime.metrics_http import serve_metrics_http


class ServiceMetric(NamedTuple):
    """One value of a worker's service beside its engine's (the prefill worker's kvstore, say)."""

    kind: Literal["counter", "gauge"]
    name: str
    doc: str
    value: float


class EngineCollector:
    def __init__(self, engine: LLMEngine, role: str, worker_id: str,
                 service: Callable[[], Sequence[ServiceMetric]] | None = None, model_name: str = "") -> None:
        self.engine = engine
        # vLLM's model_name (its dashboards select by it) beside the worker's own
        self.labels = {"model_name": model_name, "role": role, "worker_id": worker_id}
        self.service = service

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=list(self.labels))
        c.add_metric(list(self.labels.values()), value)
        return c

    def _lora_info(self) -> GaugeMetricFamily:
        """vLLM's ``lora_requests_info``: the adapters of the running and the waiting requests (by
        name, comma-separated, as vLLM labels them) and the most that run at once; its value is the
        time of the scrape."""
        sched = self.engine.scheduler

        def names(seqs: Sequence[Seq]) -> str:
            return ",".join(sorted({s.lora_name for s in seqs if s.lora_name}))

        extra = {"max_lora": str(sched.config.max_loras), "running_lora_adapters": names(list(sched.running)),
                 "waiting_lora_adapters": names(list(sched.waiting))}
        g = GaugeMetricFamily("grove:lora_requests_info", "Running and waiting LoRA adapters.",
                              labels=[*self.labels, *extra])
        g.add_metric([*self.labels.values(), *extra.values()], time.time())
        return g

    def collect(self) -> Iterator[Metric]:
        eng = self.engine
        sched, alloc = eng.scheduler, eng.allocator
        yield self._gauge("grove:num_requests_running", "Requests in the running batch.", len(sched.running))
        yield self._gauge("grove:num_requests_waiting", "Requests waiting for the batch.", len(sched.waiting))
        yield self._gauge("grove:kv_cache_usage_perc", "Fraction of local KV blocks in use.",
                          alloc.num_used / alloc.num_blocks)
        yield self._counter("grove:num_preemptions", "Sequences preempted for lack of KV blocks.", sched.num_preemptions)
        yield self._lora_info()
        for m in self.service() if self.service is not None else ():
            yield (self._counter if m.kind == "counter" else self._gauge)(m.name, m.doc, m.value)
        cache = eng.prefix_cache  # this worker's own prefix cache; None when turned off
        if cache is not None:
            yield self._counter("grove:prefix_cache_queries", "Prompt tokens looked up in the worker's prefix cache.",
                                cache.stats.query_tokens)
            yield self._counter("grove:prefix_cache_hits", "Prompt tokens found in the worker's prefix cache.",
                                cache.stats.hit_tokens)
        spec = eng.speculator
        if spec is None:
            return
        st = spec.stats
        yield self._counter("grove:spec_decode_num_drafts", "Lookahead drafts verified.", st.num_drafts)
        yield self._counter("grove:spec_decode_num_draft_tokens", "Lookahead draft tokens verified.", st.num_draft_tokens)
        yield self._counter("grove:spec_decode_num_accepted_tokens", "Lookahead draft tokens accepted.",
                            st.num_accepted_tokens)
        per_pos = CounterMetricFamily("grove:spec_decode_num_accepted_tokens_per_pos",
                                      "Accepted draft tokens by position in the draft.",
                                      labels=[*self.labels, "position"])
        accepted = dict(st.accepted_per_pos)  # one C-level copy: the engine thread may be adding a position
        for pos in range(max(spec.max_depth, max(accepted, default=-1) + 1)):  # zeros too: every position has a series
            per_pos.add_metric([*self.labels.values(), str(pos)], accepted.get(pos, 0))
        yield per_pos
        for name, doc, counts in (
                ("grove:spec_decode_num_draft_tokens_by_source", "Lookahead draft tokens verified, by the source of "
                 "their draft's first branch (own, global, corpus, prediction, number).", st.draft_tokens_by_source),
                ("grove:spec_decode_num_accepted_tokens_by_source", "Lookahead draft tokens accepted, by the source "
                 "of their draft's first branch.", st.accepted_by_source)):
            family = CounterMetricFamily(name, doc, labels=[*self.labels, "source"])
            by_source = dict(counts)  # (a copy, as above)
            for source in sorted({*SOURCES, *by_source}):  # every source has a series
                family.add_metric([*self.labels.values(), source], by_source.get(source, 0))
            yield family


def serve_metrics(engine: LLMEngine, role: str, worker_id: str, host: str, port: int,
                  service: Callable[[], Sequence[ServiceMetric]] | None = None, model_name: str = "",
                  names: str = "grove") -> int:
    """Starts /metrics for this worker on its own registry, under ``names`` (runtime.metric_names);
    returns the bound port (0 picks one)."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine, role, worker_id, service, model_name))
    server = serve_metrics_http(exposed(registry, names), host, port)
    return int(server.server_port)

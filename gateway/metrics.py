"""Prometheus metrics of one gateway, on its own registry (several gateways in one process never clash).

Request metrics follow vLLM's names with a ``grove:`` prefix, timed where the gateway sees them:
  queue    arrival -> the prefill call that succeeded is sent (waiting for a worker, failed tries)
  prefill  that call -> the first token (the worker's own queue, kvstore prefix, compute)
  TTFT     arrival -> first token;   E2E  arrival -> last token;   decode  first -> last token
  ITL      between streamed chunks (a lookahead step may deliver several tokens in one chunk)
Routing state (decisions by reason, worker health) is read from the router at scrape time.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from runtime.metric_names import exposed

if TYPE_CHECKING:
    from gateway.router import Router

# vLLM's buckets
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
# label values that exist from the start, at zero: rate() and dashboards work before the first of each
FINISH_REASONS = ("stop", "length", "abort")
ERRORS = ("InvalidRequestError", "OverloadedError", "UnavailableError")
# prefill FAILED_PRECONDITION: prefilled again because a decode worker could not get the KV
RETRIES = (("prefill", "UNAVAILABLE"), ("prefill", "DEADLINE_EXCEEDED"), ("prefill", "RESOURCE_EXHAUSTED"),
           ("prefill", "FAILED_PRECONDITION"), ("decode", "RESOURCE_EXHAUSTED"), ("decode", "UNAVAILABLE"))


class GatewayMetrics:
    def __init__(self, model_name: str, worker_id: str, router: "Router", names: str = "grove") -> None:
        """``names``: the names /metrics shows (runtime.metric_names)."""
        self.registry = CollectorRegistry()
        self._exposed = exposed(self.registry, names)
        self.labels = {"model_name": model_name, "role": "gateway", "worker_id": worker_id}
        names = list(self.labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, registry=self.registry, buckets=buckets).labels(**self.labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=self.registry).labels(**self.labels)

        self.ttft = histogram("grove:time_to_first_token_seconds", "Arrival to first token.", TTFT_BUCKETS)
        self.itl = histogram("grove:inter_token_latency_seconds", "Between streamed chunks.", ITL_BUCKETS)
        self.e2e = histogram("grove:e2e_request_latency_seconds", "Arrival to last token.", REQUEST_BUCKETS)
        self.queue = histogram("grove:request_queue_time_seconds", "Arrival to the prefill call that succeeded.",
                               REQUEST_BUCKETS)
        self.prefill = histogram("grove:request_prefill_time_seconds", "Prefill call to first token.", REQUEST_BUCKETS)
        self.decode = histogram("grove:request_decode_time_seconds", "First token to last token.", REQUEST_BUCKETS)
        self.prompt_tokens = counter("grove:prompt_tokens", "Prompt tokens of prefilled requests.")
        self.generation_tokens = counter("grove:generation_tokens", "Tokens streamed to clients.")
        self.prefix_queries = counter("grove:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("grove:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.migrations = counter("grove:request_migrations",
                                  "Streams resumed on another decode worker after theirs was lost mid-stream.")
        self._success = Counter("grove:request_success", "Finished requests by finish reason.",
                                [*names, "finished_reason"], registry=self.registry)
        self._errors = Counter("grove:request_errors", "Requests that failed, by error.", [*names, "error"],
                               registry=self.registry)
        self._retries = Counter("grove:router_retries", "Calls tried again on another worker, by the failed status.",
                                [*names, "worker_role", "code"], registry=self.registry)
        for reason in FINISH_REASONS:
            self._success.labels(**self.labels, finished_reason=reason)
        for error in ERRORS:
            self._errors.labels(**self.labels, error=error)
        for role, code in RETRIES:
            self._retries.labels(**self.labels, worker_role=role, code=code)
        self.registry.register(RouterCollector(router, self.labels))

    def success(self, reason: str) -> None:
        self._success.labels(**self.labels, finished_reason=reason).inc()

    def error(self, exc: BaseException) -> None:
        self._errors.labels(**self.labels, error=type(exc).__name__).inc()

    def retry(self, role: str, code: str) -> None:
        self._retries.labels(**self.labels, worker_role=role, code=code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self._exposed)


class RequestTrace:
    """One request's timestamps (``time.perf_counter``), observed into the metrics as they happen."""

    __slots__ = ("metrics", "arrived", "sent", "first", "last", "done", "reason", "tokens")

    def __init__(self, metrics: GatewayMetrics, arrived: float | None = None) -> None:
        self.metrics = metrics
        self.arrived = time.perf_counter() if arrived is None else arrived
        self.sent = self.first = self.last = 0.0
        self.done = False
        self.reason = ""  # the finish reason, once finished
        self.tokens = 0  # output tokens so far

    def prefill_sent(self) -> None:
        self.sent = time.perf_counter()

    def _prefilled(self, prompt_tokens: int, cached_tokens: int) -> float:
        """The prompt through a prefill worker: its queue and prefill times and its tokens; now."""
        m, now = self.metrics, time.perf_counter()
        self.first = self.last = now
        m.queue.observe(self.sent - self.arrived)
        m.prefill.observe(now - self.sent)
        m.prompt_tokens.inc(prompt_tokens)
        m.prefix_queries.inc(prompt_tokens)
        m.prefix_hits.inc(cached_tokens)
        return now

    def first_token(self, prompt_tokens: int, cached_tokens: int) -> None:
        now = self._prefilled(prompt_tokens, cached_tokens)
        self.metrics.ttft.observe(now - self.arrived)
        self.metrics.generation_tokens.inc(1)
        self.tokens = 1

    def pooled(self, prompt_tokens: int, cached_tokens: int) -> None:
        """A pooling request's end (an embedding): its prompt prefilled, no token generated; it
        finished as vLLM's pooling requests do, with "stop"."""
        now = self._prefilled(prompt_tokens, cached_tokens)
        self.metrics.e2e.observe(now - self.arrived)
        self.metrics.success("stop")
        self.done, self.reason = True, "pooled"

    def chunk(self, num_tokens: int) -> None:
        now = time.perf_counter()
        self.tokens += num_tokens
        self.metrics.itl.observe(now - self.last)
        self.metrics.generation_tokens.inc(num_tokens)
        self.last = now

    def finished(self, reason: str) -> None:
        m = self.metrics
        m.e2e.observe(self.last - self.arrived)
        m.decode.observe(self.last - self.first)
        m.success(reason)
        self.done, self.reason = True, reason

    def outcome(self, exc: BaseException | None) -> str:
        """How the request ended, for the request log."""
        if self.done and self.reason == "pooled":
            return f"pooled, e2e {self.last - self.arrived:.3f} s"
        if self.done:
            ttft = self.first - self.arrived
            return f"{self.reason}, {self.tokens} output tokens, TTFT {ttft:.3f} s, e2e {self.last - self.arrived:.3f} s"
        if exc is None or isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
            return f"aborted after {self.tokens} output tokens"
        return f"failed after {self.tokens} output tokens: {type(exc).__name__}: {exc}"

    def ended(self, exc: BaseException | None) -> None:
        """The request's generator is gone: count it as aborted or failed unless it finished."""
        if self.done:
            return
        if exc is None or isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
            self.metrics.success("abort")
        else:
            self.metrics.error(exc)


class RouterCollector:
    """The router's decisions and its view of every worker, read at scrape time."""

    def __init__(self, router: "Router", labels: dict[str, str]) -> None:
        self.router = router
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        names, values = list(self.labels), list(self.labels.values())
        decisions = CounterMetricFamily("grove:router_decisions", "Prefill routing decisions by reason.",
                                        labels=[*names, "reason"])
        for reason, n in self.router.decisions.items():
            decisions.add_metric([*values, reason], n)
        yield decisions
        healthy = GaugeMetricFamily("grove:router_worker_healthy", "1 if the worker passes health checks.",
                                    labels=[*names, "worker_role", "address", "worker"])
        in_flight = GaugeMetricFamily("grove:router_worker_in_flight", "Calls this gateway has open on the worker.",
                                      labels=[*names, "worker_role", "address", "worker"])
        for w in self.router.workers():
            key = [*values, w.role, w.address, w.stats.worker_id]
            healthy.add_metric(key, float(w.healthy))
            in_flight.add_metric(key, w.in_flight)
        yield healthy
        yield in_flight

"""Every service of the stack started with ``--metrics-names both``: each ``grove:`` series has its
``vllm:`` twin with the same labels and value, the workers' carry vLLM's ``model_name``, and the
queries a dashboard or autoscaler built for vLLM sends come back from a real Prometheus server."""
from __future__ import annotations

from pathlib import Path

from launcher.stack import Stack
from tests.observability.conftest import Prometheus, Traffic, scrape


def test_each_grove_series_has_its_vllm_twin(stack: Stack, traffic: Traffic) -> None:
    jobs = set()
    for job, _, address in stack.metrics_targets():
        samples = scrape(address)
        grove = {name: rows for name, rows in samples.items() if name.startswith("grove:")}
        assert grove, f"{job} exports no grove: metric"
        for name, rows in grove.items():
            twin = samples.get("vllm:" + name.removeprefix("grove:"))
            assert twin is not None, f"{job}: {name} has no vllm: twin"
            assert sorted(map(repr, twin)) == sorted(map(repr, rows)), (job, name)
        if job in ("prefill", "decode"):
            model = Path(stack.model_dir).name
            assert all(labels["model_name"] == model for labels, _ in samples["vllm:num_requests_running"]), job
        jobs.add(job)
    assert jobs == {"kvstore", "prefill", "decode", "gateway"}


def test_vllm_queries_from_prometheus(stack: Stack, prometheus: Prometheus, traffic: Traffic) -> None:
    model = Path(stack.model_dir).name
    tokens = prometheus.wait_for(f'sum(vllm:generation_tokens_total{{model_name="{model}", role="gateway"}})',
                                 lambda v: v == traffic.usage("completion_tokens"))
    assert tokens == prometheus.scalar('sum(grove:generation_tokens_total{role="gateway"})') > 0
    # the workers' load, as an autoscaler or an endpoint picker built for vLLM reads it
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        expr = f'{name}{{model_name="{model}"}}'
        assert sorted(r["metric"]["role"] for r in prometheus.query(expr)) == ["decode", "prefill"], expr
    p50 = prometheus.scalar("histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))")
    assert p50 is not None and p50 > 0

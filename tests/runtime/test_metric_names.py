"""runtime.metric_names: a registry's ``grove:`` metrics exposed under vLLM's names, Grove's, or
both, the twins of one series with one value (tests/observability/test_vllm_metric_names.py reads
them from a stack through Prometheus)."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.metric_names import exposed


def _registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("grove:prompt_tokens", "Prompt tokens.", ["model_name"], registry=r).labels(model_name="m").inc(7)
    Gauge("grove:num_requests_waiting", "Waiting.", registry=r).set(3)
    Histogram("grove:time_to_first_token_seconds", "TTFT.", registry=r, buckets=(0.1, 1.0)).observe(0.5)
    Gauge("process_other", "Not Grove's.", registry=r).set(1)
    return r


def _samples(registry: CollectorRegistry, names: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(exposed(registry, names)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_vllm_names_replace_grove_names_with_the_same_series() -> None:
    registry = _registry()
    grove, vllm, both = (_samples(registry, names) for names in ("grove", "vllm", "both"))
    renamed = {(name.replace("grove:", "vllm:", 1), labels): v for (name, labels), v in grove.items()}
    assert vllm == renamed and both == {**grove, **renamed}
    assert vllm[("vllm:prompt_tokens_total", (("model_name", "m"),))] == 7
    assert vllm[("vllm:time_to_first_token_seconds_bucket", (("le", "1.0"),))] == 1
    assert ("process_other", ()) in vllm and not any(name.startswith("grove:") for name, _ in vllm)
    with pytest.raises(ValueError, match="must be one of"):
        exposed(_registry(), "prometheus")

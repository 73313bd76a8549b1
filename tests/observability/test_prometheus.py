"""A real Prometheus server scrapes the stack: TTFT quantiles and the prefix-cache counter come back
through its HTTP API."""
from __future__ import annotations

import bisect

from gateway.metrics import TTFT_BUCKETS
from tests.observability.conftest import Prometheus, Traffic


def test_ttft_quantile_from_prometheus(prometheus: Prometheus, traffic: Traffic) -> None:
    n = len(traffic.responses)
    prometheus.wait_for("sum(grove:time_to_first_token_seconds_count)", lambda v: v == n)
    p50 = prometheus.scalar(
        "histogram_quantile(0.5, sum by (le) (increase(grove:time_to_first_token_seconds_bucket[5m])))")
    assert p50 is not None and p50 > 0, p50
    # no server-side TTFT exceeds what the clients measured, so the estimate stays under the bucket
    # bound above the slowest client-side TTFT
    bound = TTFT_BUCKETS[min(bisect.bisect_left(TTFT_BUCKETS, max(traffic.ttfts)), len(TTFT_BUCKETS) - 1)]
    assert p50 <= bound, (p50, traffic.ttfts)


def test_prefix_cache_hits_from_prometheus(prometheus: Prometheus, traffic: Traffic) -> None:
    hits = prometheus.wait_for('sum(grove:prefix_cache_hits_total{role="gateway"})',
                               lambda v: v == traffic.cached_tokens)
    queries = prometheus.scalar('sum(grove:prefix_cache_queries_total{role="gateway"})')
    assert 0 < hits < queries == traffic.usage("prompt_tokens")
    rate = prometheus.scalar('sum(increase(grove:prefix_cache_hits_total{role="gateway"}[5m])) / '
                             'sum(increase(grove:prefix_cache_queries_total{role="gateway"}[5m]))')
    assert rate is not None and 0 < rate < 1


def test_the_workers_and_the_kvstores_metrics_reach_prometheus_by_their_names(prometheus: Prometheus,
                                                                             traffic: Traffic) -> None:
    """Served in the text format, whose names keep their ':' (prometheus_client's OpenMetrics, which
    a Prometheus server asks for, wrote them with '_' and the dashboard's queries found nothing)."""
    for expr in ("grove:num_requests_waiting", "grove:kv_cache_usage_perc", "grove:spec_decode_num_drafts_total"):
        roles = {r["metric"]["role"] for r in prometheus.query(expr)}
        assert roles >= {"decode"} if "spec" in expr else roles == {"decode", "prefill"}, (expr, roles)
    assert prometheus.wait_for("sum(grove:kvstore_blocks_used)", lambda v: v > 0) > 0

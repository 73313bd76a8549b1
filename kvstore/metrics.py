"""Prometheus metrics of the KV store, read from the store at scrape time (no globals: each store
gets its own registry). Names carry the ``grove:kvstore_`` prefix; prometheus_client 0.26 accepts
':' in metric names (its name pattern is ``[a-zA-Z_:][a-zA-Z0-9_:]*``)."""
from __future__ import annotations

import logging
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore.store import KVStore
from runtime.metric_names import exposed
from runtime.metrics_http import serve_metrics_http

logger = logging.getLogger(__name__)
PREFIX = "grove:kvstore_"


class StoreCollector(Collector):
    def __init__(self, store: KVStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        s = self.store
        used = GaugeMetricFamily(PREFIX + "blocks_used", "Blocks in use (cached or being written)", labels=["tier"])
        cached = GaugeMetricFamily(PREFIX + "blocks_cached", "Blocks held by the prefix trie", labels=["tier"])
        capacity = GaugeMetricFamily(PREFIX + "blocks_capacity", "Blocks the tier holds", labels=["tier"])
        evictions = CounterMetricFamily(PREFIX + "evictions", "Blocks evicted out of a tier",
                                        labels=["tier", "kind"])
        for i, tier in enumerate(s.tiers):
            used.add_metric([tier.name], tier.allocator.num_used)
            cached.add_metric([tier.name], s.lru.num_live(i))
            capacity.add_metric([tier.name], tier.capacity)
            evictions.add_metric([tier.name, "demoted"], tier.demoted)
            evictions.add_metric([tier.name, "dropped"], tier.dropped)
        yield from (used, cached, capacity, evictions)
        yield CounterMetricFamily(PREFIX + "match_queries", "Match requests", value=s.match_queries)
        yield CounterMetricFamily(PREFIX + "match_query_tokens", "Tokens asked for by Match",
                                  value=s.match_query_tokens)
        yield CounterMetricFamily(PREFIX + "match_hit_tokens", "Tokens Match found cached", value=s.match_hit_tokens)
        yield GaugeMetricFamily(PREFIX + "leases", "Live leases", value=len(s.leases))
        yield CounterMetricFamily(PREFIX + "expired_leases", "Leases ended by expiry", value=s.expired_leases)
        moved = CounterMetricFamily(PREFIX + "transfer_bytes", "KV bytes moved (nixl: as reported by clients)",
                                    labels=["plane", "direction"])
        seconds = CounterMetricFamily(PREFIX + "transfer_seconds", "Seconds spent moving KV bytes",
                                      labels=["plane", "direction"])
        for (plane, direction, what), value in list(s.transfers.items()):
            (moved if what == "bytes" else seconds).add_metric([plane, direction], value)
        yield moved
        yield seconds
        snap = s.snapshot_stats  # (--snapshot-interval's; the one at shutdown is not scraped)
        snapshots = CounterMetricFamily(PREFIX + "snapshots", "Snapshots of the cache written while serving",
                                        labels=["outcome"])
        snapshots.add_metric(["written"], snap.written)
        snapshots.add_metric(["failed"], snap.failed)
        yield snapshots
        yield GaugeMetricFamily(PREFIX + "snapshot_blocks", "Blocks in the last snapshot written", value=snap.blocks)
        yield GaugeMetricFamily(PREFIX + "snapshot_seconds", "How long the last snapshot took to write",
                                value=snap.seconds)
        yield GaugeMetricFamily(PREFIX + "snapshot_timestamp_seconds",
                                "When the last snapshot was written (unix time; 0: none yet)", value=snap.at)


def serve_metrics(store: KVStore, port: int, addr: str = "0.0.0.0", names: str = "grove"):
    """Start the /metrics endpoint on its own thread (port 0: any free one), under ``names``
    (runtime.metric_names); returns the HTTP server (``.server_port``; call ``.shutdown()``)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    server = serve_metrics_http(exposed(registry, names), addr, port)
    logger.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server

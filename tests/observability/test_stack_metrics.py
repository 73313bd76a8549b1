"""Every service's /metrics on the real stack, checked against what the clients saw; the gRPC health
probe; the router's DNS expansion against the live workers."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.engine_config import EngineConfig
from gateway.router import Router
from launcher.stack import Stack
from tests.observability.conftest import ROOT, Traffic, free_port, scrape, total


def test_gateway_counts_what_the_clients_saw(stack: Stack, traffic: Traffic) -> None:
    m = scrape(stack.http_url.removeprefix("http://"))
    n = len(traffic.responses)
    labels = m["grove:time_to_first_token_seconds_count"][0][0]
    assert labels["role"] == "gateway" and labels["model_name"] == "SmolLM2-135M-Instruct" and labels["worker_id"]
    for hist in ("time_to_first_token", "e2e_request_latency", "request_queue_time", "request_prefill_time",
                 "request_decode_time"):
        assert total(m, f"grove:{hist}_seconds_count") == n, hist
    assert total(m, "grove:inter_token_latency_seconds_count") > 0
    assert total(m, "grove:request_success_total") == n
    assert total(m, "grove:request_success_total", finished_reason="abort") == 0
    assert total(m, "grove:prompt_tokens_total") == traffic.usage("prompt_tokens")
    assert total(m, "grove:generation_tokens_total") == traffic.usage("completion_tokens")
    assert total(m, "grove:prefix_cache_queries_total") == traffic.usage("prompt_tokens")
    assert total(m, "grove:prefix_cache_hits_total") == traffic.cached_tokens > 0
    # queue + prefill is the TTFT, request by request
    ttft, queue, prefill = (total(m, f"grove:{h}_seconds_sum") for h in
                            ("time_to_first_token", "request_queue_time", "request_prefill_time"))
    assert prefill > 0 and abs(queue + prefill - ttft) < 1e-6
    assert total(m, "grove:router_decisions_total") == n
    health = m["grove:router_worker_healthy"]
    assert sorted((lab["worker_role"], lab["worker"], v) for lab, v in health) == [
        ("decode", "decode-0", 1.0), ("prefill", "prefill-0", 1.0)]


def test_workers_are_labelled_by_role_and_id(stack: Stack, traffic: Traffic) -> None:
    model = Path(stack.model_dir).name  # vLLM's model_name: the gateway's served name (its default)
    for name, role in (("prefill-0", "prefill"), ("decode-0", "decode")):
        m = scrape(f"127.0.0.1:{stack.service(name).info['metrics_port']}")
        for metric in ("grove:num_requests_running", "grove:num_requests_waiting", "grove:kv_cache_usage_perc",
                       "grove:prefix_cache_queries_total", "grove:prefix_cache_hits_total"):
            (labels, value), = m[metric]
            assert labels == {"model_name": model, "role": role, "worker_id": name}, (metric, labels)
            assert 0 <= value <= (1 if metric.endswith("perc") else 10_000)
    m = scrape(f"127.0.0.1:{stack.service('prefill-0').info['metrics_port']}")
    # every prompt was looked up locally (the 6-token one perhaps not: it has no full block)
    assert total(m, "grove:prefix_cache_queries_total") >= traffic.usage("prompt_tokens") - 6
    # the kvstore as the prefill worker sees it (tests/pipeline/test_failures.py makes it fail)
    assert m["grove:kvstore_connected"] == [({"model_name": model, "role": "prefill", "worker_id": "prefill-0"}, 1.0)]
    assert m["grove:kvstore_failures_total"] == [({"model_name": model, "role": "prefill", "worker_id": "prefill-0"},
                                                  0.0)]
    m = scrape(f"127.0.0.1:{stack.service('decode-0').info['metrics_port']}")
    # and as the decode worker sees it (it writes what it generated there)
    assert m["grove:kvstore_connected"] == [({"model_name": model, "role": "decode", "worker_id": "decode-0"}, 1.0)]
    assert m["grove:kvstore_failures_total"] == [({"model_name": model, "role": "decode", "worker_id": "decode-0"},
                                                  0.0)]
    positions = sorted(int(lab["position"]) for lab, _ in m["grove:spec_decode_num_accepted_tokens_per_pos_total"])
    # every draft position has a series, accepted or not (the decode worker runs the default depth)
    assert positions == list(range(EngineConfig().lookahead_max_depth))
    per_pos = total(m, "grove:spec_decode_num_accepted_tokens_per_pos_total")
    assert per_pos == total(m, "grove:spec_decode_num_accepted_tokens_total")
    # and by the source of each draft's first branch: every source has a series; they add up
    by_source = {lab["source"]: v for lab, v in m["grove:spec_decode_num_accepted_tokens_by_source_total"]}
    assert set(by_source) == {"own", "global", "corpus", "prediction", "number"}
    assert sum(by_source.values()) == per_pos
    assert total(m, "grove:spec_decode_num_draft_tokens_by_source_total") == \
        total(m, "grove:spec_decode_num_draft_tokens_total")


def test_kvstore_counts_matches_hits_and_transfers(stack: Stack, traffic: Traffic) -> None:
    """The prefill worker asks the kvstore for what its own cache lacks and writes its prompts' full
    blocks back (reads, per plane, are counted exactly in test_kvstore_transfer_metrics)."""
    m = scrape(f"127.0.0.1:{stack.service('kvstore').info['metrics_port']}")
    assert 1 <= total(m, "grove:kvstore_match_queries_total") <= len(traffic.responses)
    assert total(m, "grove:kvstore_match_query_tokens_total") >= 96
    assert total(m, "grove:kvstore_blocks_capacity", tier="cpu") > total(m, "grove:kvstore_blocks_used", tier="cpu") > 0
    mc = ModelConfig.from_dir(stack.model_dir)
    block_bytes = 16 * mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * getattr(torch, mc.torch_dtype).itemsize
    # each cached block was written once, over whichever plane the worker has
    assert total(m, "grove:kvstore_transfer_bytes_total", direction="write") == block_bytes * total(
        m, "grove:kvstore_blocks_used", tier="cpu")
    assert total(m, "grove:kvstore_transfer_seconds_total", direction="write") > 0


def test_metrics_targets_name_every_service(stack: Stack) -> None:
    jobs = sorted((job, labels["service"]) for job, labels, _ in stack.metrics_targets())
    assert jobs == [("decode", "decode-0"), ("gateway", "gateway"), ("kvstore", "kvstore"), ("prefill", "prefill-0")]


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.healthcheck", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_healthcheck_probe(stack: Stack) -> None:
    for name, service in (("gateway", "grove.v1.Grove"), ("prefill-0", "grove.internal.v1.PrefillWorker"),
                          ("decode-0", "grove.internal.v1.DecodeWorker"), ("kvstore", "grove.internal.v1.KVStore")):
        out = probe(stack.address(name), service)
        assert out.returncode == 0 and "SERVING" in out.stdout, (name, out.stdout, out.stderr)
    wrong = probe(stack.address("gateway"), "grove.internal.v1.KVStore")
    assert wrong.returncode == 1 and "NOT_FOUND" in wrong.stdout
    dead = probe(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stdout


def test_router_finds_workers_by_dns_name(stack: Stack) -> None:
    port = stack.service("prefill-0").info["grpc_port"]

    async def resolved(*targets: str) -> list[tuple[str, bool, str]]:
        router = Router(list(targets), [], block_size=16)
        try:
            assert router.prefill == []  # nothing until the first resolution
            await router.refresh()
            return [(w.address, w.healthy, w.stats.worker_id) for w in router.prefill]
        finally:
            await router.close()

    assert asyncio.run(resolved(f"dns:localhost:{port}")) == [(f"127.0.0.1:{port}", True, "prefill-0")]
    # a failed lookup keeps the pool as it was (here: still empty) rather than guess
    assert asyncio.run(resolved(f"dns:localhost:{port}", "dns:no-such-host.invalid:1")) == []

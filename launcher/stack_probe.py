"""Reads each process's KV accounting from the real stack (workers' Stats, the kvstore's Stats)."""
from __future__ import annotations

import re
import time

import grpc
import httpx

from grove.internal.v1 import kvstore_pb2, kvstore_pb2_grpc
from grove.internal.v1 import worker_pb2 as wpb
from grove.internal.v1 import worker_pb2_grpc as wpb_grpc
from launcher.stack import Stack


def worker_stat(stack: Stack, name: str) -> wpb.WorkerStats:
    """One worker's Stats (``name``: "prefill-0", "decode-1", ...)."""
    with grpc.insecure_channel(stack.address(name)) as ch:
        stub = (wpb_grpc.PrefillWorkerStub if name.startswith("prefill") else wpb_grpc.DecodeWorkerStub)(ch)
        return stub.Stats(wpb.WorkerStatsRequest(), timeout=5)


def worker_stats(stack: Stack) -> dict[str, wpb.WorkerStats]:
    """Every live worker's Stats by name."""
    return {svc.name: worker_stat(stack, svc.name) for svc in stack.services
            if svc.name.startswith(("prefill", "decode")) and svc.proc.poll() is None}


def kvstore_stats(stack: Stack) -> kvstore_pb2.StatsResponse:
    with grpc.insecure_channel(stack.address("kvstore")) as ch:
        return kvstore_pb2_grpc.KVStoreStub(ch).Stats(kvstore_pb2.StatsRequest(), timeout=5)


def idle_snapshot(stack: Stack) -> dict[str, tuple[int, int, int]]:
    """(used blocks, running, held leases) per worker, plus the kvstore's open leases."""
    snap = {name: (s.total_blocks - s.free_blocks, s.num_running + s.num_waiting, s.held_leases)
            for name, s in worker_stats(stack).items()}
    snap["kvstore"] = (0, 0, kvstore_stats(stack).num_leases)
    return snap


def wait_idle(stack: Stack, timeout_s: float = 20.0) -> dict[str, tuple[int, int, int]]:
    """Polls until every process is back to zero blocks in use, nothing running, no leases."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = idle_snapshot(stack)
        if all(v == (0, 0, 0) for v in snap.values()) or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


def gateway_retry_counts(stack: Stack) -> dict[tuple[str, str], float]:
    """The gateway's calls tried again on another worker, by (worker role, failed status)."""
    text = httpx.get(stack.http_url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("grove:router_retries_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[(labels["worker_role"], labels["code"])] = float(line.rsplit(" ", 1)[1])
    return out


def gateway_retries(stack: Stack) -> float:
    """The gateway's calls tried again on another worker, all reasons together."""
    return sum(gateway_retry_counts(stack).values())

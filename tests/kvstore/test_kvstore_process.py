"""``python -m kvstore`` as a process: its flags, health, metrics endpoint, SIGTERM shutdown."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grove.internal.v1 import kvstore_pb2 as pb
from grove.internal.v1 import kvstore_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "UCX_NET_DEVICES": "lo", "PYTHONPATH": str(ROOT)}


def test_help_lists_the_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "kvstore", "--help"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--address", "--port-file", "--cpu-capacity", "--gpu-capacity", "--block-size", "--no-nixl",
                 "--metrics-port", "--lease-ttl", "--grace-period", "--disk-capacity", "--disk-path", "--snapshot"):
        assert flag in out.stdout, flag


def test_gpu_tier_without_cuda_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "kvstore", "--gpu-capacity", "1GiB"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--gpu-capacity needs CUDA" in out.stderr, out.stderr


def test_a_disk_tier_without_its_file_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "kvstore", "--disk-capacity", "1GiB"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--disk-capacity needs --disk-path" in out.stderr, out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serves_health_and_metrics_then_drains_on_sigterm() -> None:
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "--address", "127.0.0.1:0", "--port-file", str(port_file),
             "--no-nixl", "--cpu-capacity", "64MiB", "--metrics-port", str(metrics_port), "--grace-period", "2",
             "--check-integrity-on-exit"],
            cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "kvstore did not start"
                time.sleep(0.05)
            address = f"127.0.0.1:{int(port_file.read_text())}"

            async def check() -> None:
                async with grpc.aio.insecure_channel(address) as channel:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    stats = await pb_grpc.KVStoreStub(channel).Stats(pb.StatsRequest())
                    assert [t.name for t in stats.tiers] == ["cpu"] and stats.block_bytes == 30 * 2 * 16 * 3 * 64 * 4
                    assert stats.tiers[0].capacity_blocks == (64 << 20) // stats.block_bytes

            uvloop.run(check())
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            assert 'grove:kvstore_blocks_capacity{tier="cpu"} 91.0' in text
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            log = proc.stderr.read()
            assert "shutting down: draining" in log and "integrity checked" in log, log
        finally:
            if proc.poll() is None:
                proc.kill()

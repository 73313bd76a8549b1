"""The serving lifecycle both workers share: bind, serve, report readiness, drain on SIGTERM."""
from __future__ import annotations

import argparse
import os
import asyncio
import logging
from pathlib import Path
from typing import Callable, Protocol, Sequence

import grpc

from engine.async_engine import AsyncEngine
from runtime.engine_metrics import ServiceMetric, serve_metrics
from runtime.metric_names import add_metrics_names_arg
from runtime.grpc_server import create_server, set_serving
from runtime.process import write_ready_file
from runtime.stats_log import log_stats

logger = logging.getLogger(__name__)
DRAIN_POLL_S = 0.05


class ShuttingDownError(Exception):
    """The worker is draining (SIGTERM): new work belongs on another worker. Answered UNAVAILABLE,
    which the gateway retries elsewhere."""


class Drainable(Protocol):
    """A worker's service as its shutdown sees it."""

    draining: bool  # set on SIGTERM: new work raises ShuttingDownError from then on

    def pending(self) -> int:
        """Work that would be lost if the process went now (requests in flight, KV not yet taken)."""
        ...


def add_worker_args(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument("--address", default="127.0.0.1:0", help="gRPC bind address (port 0 picks one)")
    p.add_argument("--nixl", choices=["on", "off"], default="on", help="KV data plane: NIXL, else gRPC bytes")
    p.add_argument("--worker-id", default="", help=f"label in metrics and stats (default: {role}-<pid>)")
    p.add_argument("--metrics-port", type=int, default=-1, help="Prometheus /metrics port (0 picks one, -1 off)")
    p.add_argument("--ready-file", default="", help="write bound ports here as JSON once serving")
    p.add_argument("--kvstore", default="", help="kvstore gRPC address ('' = no shared cache): prefill workers "
                   "read prefixes from it and write their prompts' blocks, decode workers what they generate")
    p.add_argument("--kvstore-timeout", type=float, default=5.0,
                   help="seconds a kvstore call may take before the request goes on without it")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight work gets to finish before the worker exits")
    p.add_argument("--profiler-dir", default=os.environ.get("VLLM_TORCH_PROFILER_DIR", ""),
                   help="where torch profiler traces go when the gateway's /start_profile and /stop_profile ask "
                        "(vLLM's VLLM_TORCH_PROFILER_DIR; '' = no profiling)")
    p.add_argument("--served-model-name", default="",
                   help="the model's name in the metrics' model_name label, as the gateway serves it (default: "
                        "the model directory's name, the gateway's default)")
    add_metrics_names_arg(p)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--disable-log-stats", action="store_true", help="no periodic stats line in the log (vLLM's flag)")
    p.add_argument("--log-stats-interval", type=float, default=10.0,
                   help="seconds between stats lines: throughput, requests, KV cache, prefix hits, lookahead")


async def serve_worker(args: argparse.Namespace, role: str, service_name: str, worker_id: str, engine: AsyncEngine,
                       add_servicer: Callable[[grpc.aio.Server, str], None], stop: asyncio.Event,
                       service: Drainable,
                       service_metrics: Callable[[], Sequence[ServiceMetric]] | None = None) -> None:
    """Serves until ``stop`` is set (SIGTERM), then drains: health turns NOT_SERVING, new work is
    refused (the gateway sends it elsewhere) while the server keeps answering for the work in
    flight, until ``service.pending()`` is 0 or ``--drain-timeout`` has passed; then it stops.

    ``add_servicer(server, address)`` registers the role's servicer; ``address`` is where peers
    reach this worker (the bound port filled in). ``service_metrics``: the role's own metrics
    beside the engine's.
    """
    server, port, health = create_server(args.address)
    host = args.address.rsplit(":", 1)[0]
    add_servicer(server, f"{host}:{port}")
    await server.start()
    await set_serving(health, [service_name], True)
    model_name = args.served_model_name or Path(engine.engine.config.model_dir).name
    metrics_port = (serve_metrics(engine.engine, role, worker_id, host, args.metrics_port, service_metrics,
                                  model_name, args.metrics_names)
                    if args.metrics_port >= 0 else None)
    write_ready_file(args.ready_file, {"grpc_port": port, "worker_id": worker_id, "metrics_port": metrics_port})
    logger.info("%s worker %s serving on %s:%d", role, worker_id, host, port)
    stats = None if args.disable_log_stats else asyncio.create_task(log_stats(engine.engine, args.log_stats_interval, stop))
    await stop.wait()
    if stats is not None:
        await stats
    await set_serving(health, [service_name], False)
    service.draining = True
    logger.info("draining: %d in flight, up to %.0f s", service.pending(), args.drain_timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.drain_timeout
    while service.pending() and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)
    if service.pending():
        logger.warning("drain timeout: %d still in flight are cut off", service.pending())
    await server.stop(grace=1.0)

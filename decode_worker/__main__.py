"""``python -m decode_worker``: one decode worker process."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os

from decode_worker.kv_puller import KVPuller
from decode_worker.service import DecodeService
from decode_worker.servicer import DecodeServicer
from engine.async_engine import AsyncEngine
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from runtime.engine_metrics import serve_metrics
from runtime.grpc_server import create_server, set_serving
from runtime.kv_transfer import make_plane
from runtime.process import configure_logging, run_service, write_ready_file

logger = logging.getLogger("decode_worker")
SERVICE = "grove.internal.v1.DecodeWorker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m decode_worker", description=__doc__)
    p.add_argument("--address", default="127.0.0.1:0", help="gRPC bind address (port 0 picks one)")
    p.add_argument("--nixl", choices=["on", "off"], default="on", help="KV data plane: NIXL, else gRPC bytes")
    p.add_argument("--max-requests", type=int, default=256, help="requests in flight before RESOURCE_EXHAUSTED")
    p.add_argument("--worker-id", default="", help="label in metrics and stats (default: decode-<pid>)")
    p.add_argument("--metrics-port", type=int, default=-1, help="Prometheus /metrics port (0 picks one, -1 off)")
    p.add_argument("--ready-file", default="", help="write bound ports here as JSON once serving")
    p.add_argument("--log-level", default="INFO")
    EngineConfig.add_cli_args(p)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    worker_id = args.worker_id or f"decode-{os.getpid()}"
    engine = AsyncEngine(LLMEngine(EngineConfig.from_cli(args)))
    engine.start()
    plane = make_plane("decode", engine.engine.kv.data, args.nixl == "on")
    puller = KVPuller(engine.engine.kv.data, plane)
    service = DecodeService(engine, puller, args.max_requests)
    server, port, health = create_server(args.address)
    pb_grpc.add_DecodeWorkerServicer_to_server(DecodeServicer(service, worker_id), server)
    await server.start()
    await set_serving(health, [SERVICE], True)
    metrics_port = None
    if args.metrics_port >= 0:
        metrics_port = serve_metrics(engine.engine, "decode", worker_id, args.address.rsplit(":", 1)[0], args.metrics_port)
    write_ready_file(args.ready_file, {"grpc_port": port, "worker_id": worker_id, "metrics_port": metrics_port})
    logger.info("decode worker %s serving on port %d", worker_id, port)
    await stop.wait()
    logger.info("draining")
    await set_serving(health, [SERVICE], False)
    await server.stop(grace=30.0)
    await puller.close()
    await engine.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, "decode")
    run_service(lambda stop: serve(args, stop))


if __name__ == "__main__":
    main()

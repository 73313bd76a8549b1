"""``python -m prefill_worker``: one prefill worker process."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os

from engine.async_engine import AsyncEngine
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from kvstore.client import KVStoreClient
from prefill_worker.service import PrefillService
from prefill_worker.servicer import PrefillServicer
from runtime.engine_metrics import serve_metrics
from runtime.grpc_server import create_server, set_serving
from runtime.kv_transfer import POOL_NAME, make_plane
from runtime.process import configure_logging, run_service, write_ready_file

logger = logging.getLogger("prefill_worker")
SERVICE = "grove.internal.v1.PrefillWorker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m prefill_worker", description=__doc__)
    p.add_argument("--address", default="127.0.0.1:0", help="gRPC bind address (port 0 picks one)")
    p.add_argument("--advertise", default="", help="address others reach this worker at (default: bound address)")
    p.add_argument("--kvstore", default="", help="kvstore gRPC address ('' = no shared prefix cache)")
    p.add_argument("--nixl", choices=["on", "off"], default="on", help="KV data plane: NIXL, else gRPC bytes")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="seconds a handed-over KV stays held unclaimed")
    p.add_argument("--max-waiting", type=int, default=64, help="requests in flight before RESOURCE_EXHAUSTED")
    p.add_argument("--worker-id", default="", help="label in metrics and stats (default: prefill-<pid>)")
    p.add_argument("--metrics-port", type=int, default=-1, help="Prometheus /metrics port (0 picks one, -1 off)")
    p.add_argument("--ready-file", default="", help="write bound ports here as JSON once serving")
    p.add_argument("--log-level", default="INFO")
    EngineConfig.add_cli_args(p)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    worker_id = args.worker_id or f"prefill-{os.getpid()}"
    # prefill-only: every request stops after its first token, so lookahead has nothing to do here
    engine = AsyncEngine(LLMEngine(dataclasses.replace(EngineConfig.from_cli(args), lookahead=False)))
    engine.start()
    plane = make_plane("prefill", engine.engine.kv.data, args.nixl == "on")
    kvstore = None
    if args.kvstore:
        # one NIXL agent per process: the kvstore client shares the handoff plane's registration
        kvstore = KVStoreClient(args.kvstore, engine.engine.layout, engine.engine.kv.data, use_nixl=plane is not None,
                                plane=plane, plane_pool=POOL_NAME)
        await kvstore.start()
    server, port, health = create_server(args.address)
    host = args.address.rsplit(":", 1)[0]
    service = PrefillService(engine, args.advertise or f"{host}:{port}", kvstore, plane, args.lease_ttl, args.max_waiting)
    pb_grpc.add_PrefillWorkerServicer_to_server(PrefillServicer(service, worker_id), server)
    await server.start()
    await set_serving(health, [SERVICE], True)
    metrics_port = None
    if args.metrics_port >= 0:
        metrics_port = serve_metrics(engine.engine, "prefill", worker_id, args.address.rsplit(":", 1)[0], args.metrics_port)
    write_ready_file(args.ready_file, {"grpc_port": port, "worker_id": worker_id, "metrics_port": metrics_port})
    logger.info("prefill worker %s serving on %s:%d", worker_id, host, port)

    async def reaper() -> None:
        while True:
            await asyncio.sleep(1.0)
            await service.reap_expired()

    reap = asyncio.create_task(reaper())
    await stop.wait()
    logger.info("draining")
    await set_serving(health, [SERVICE], False)
    await server.stop(grace=10.0)
    reap.cancel()
    await service.drain_background()
    if kvstore is not None:
        await kvstore.close()
    await engine.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, "prefill")
    run_service(lambda stop: serve(args, stop))


if __name__ == "__main__":
    main()

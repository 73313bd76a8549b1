"""``python -m prefill_worker``: one prefill worker process."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os

import grpc

from engine.async_engine import AsyncEngine
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from prefill_worker.service import PrefillService
from prefill_worker.servicer import PrefillServicer
from kvstore.shared_cache import open_shared_cache
from runtime.worker_process import add_worker_args, serve_worker
from runtime.kv_transfer import make_plane
from runtime.process import configure_logging, run_service, tune_gc

logger = logging.getLogger("prefill_worker")
SERVICE = "grove.internal.v1.PrefillWorker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m prefill_worker", description=__doc__)
    p.add_argument("--advertise", default="", help="address others reach this worker at (default: bound address)")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="seconds a handed-over KV stays held unclaimed")
    p.add_argument("--max-waiting", type=int, default=256,
                   help="requests in flight before RESOURCE_EXHAUSTED (default: %(default)s, the gateway's --max-concurrent)")
    add_worker_args(p, "prefill")
    EngineConfig.add_cli_args(p)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    worker_id = args.worker_id or f"prefill-{os.getpid()}"
    # prefill-only: every request stops after its first token, so lookahead has nothing to do here
    config = dataclasses.replace(EngineConfig.from_cli(args), lookahead=False)
    engine = await AsyncEngine.create(lambda: LLMEngine(config))
    tune_gc()  # the model is loaded: its objects are frozen
    plane = make_plane("prefill", engine.engine.kv.data, args.nixl == "on", passive=True)
    kvstore = await open_shared_cache(args.kvstore, args.kvstore_timeout, engine, plane)
    service = PrefillService(engine, args.advertise, kvstore, plane, args.lease_ttl, args.max_waiting)

    def add_servicer(server: grpc.aio.Server, address: str) -> None:
        service.address = args.advertise or address  # KV handles name this worker by it
        servicer = PrefillServicer(service, worker_id, args.profiler_dir)
        pb_grpc.add_PrefillWorkerServicer_to_server(servicer, server)
        pb_grpc.add_WorkerControlServicer_to_server(servicer.control, server)

    async def reaper() -> None:
        while True:
            await asyncio.sleep(1.0)
            await service.reap_expired()

    reap = asyncio.create_task(reaper())
    await serve_worker(args, "prefill", SERVICE, worker_id, engine, add_servicer, stop, service,
                       service_metrics=service.metrics)
    reap.cancel()
    if kvstore is not None:
        await kvstore.close()
    await engine.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, "prefill")
    run_service(lambda stop: serve(args, stop))


if __name__ == "__main__":
    main()

"""``python -m decode_worker``: one decode worker process."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os

import grpc

from decode_worker.kv_puller import KVPuller
from decode_worker.service import ADMIT_WAIT_S, DecodeService
from decode_worker.servicer import DecodeServicer
from engine.async_engine import AsyncEngine
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lookahead.trie_state import save_trie
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from kvstore.shared_cache import open_shared_cache
from runtime.worker_process import add_worker_args, serve_worker
from runtime.kv_transfer import make_plane
from runtime.process import configure_logging, run_service, tune_gc

logger = logging.getLogger("decode_worker")
SERVICE = "grove.internal.v1.DecodeWorker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m decode_worker", description=__doc__)
    p.add_argument("--max-requests", type=int, default=256, help="requests in flight before RESOURCE_EXHAUSTED")
    p.add_argument("--admit-wait", type=float, default=ADMIT_WAIT_S,
                   help="seconds a handed-over request waits for room in the batch (KV blocks) before "
                        "RESOURCE_EXHAUSTED; its KV's lease on the prefill worker is renewed meanwhile")
    add_worker_args(p, "decode")
    EngineConfig.add_cli_args(p)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    worker_id = args.worker_id or f"decode-{os.getpid()}"
    # "{worker_id}" in --lookahead-state: a file of each worker's own where several share the flag
    config = dataclasses.replace(EngineConfig.from_cli(args),
                                 lookahead_state=args.lookahead_state.replace("{worker_id}", worker_id))
    engine = await AsyncEngine.create(lambda: LLMEngine(config))
    tune_gc()  # the model is loaded: its objects are frozen
    plane = make_plane("decode", engine.engine.kv.data, args.nixl == "on", passive=False)
    puller = KVPuller(engine.engine.kv.data, plane)
    kvstore = await open_shared_cache(args.kvstore, args.kvstore_timeout, engine, plane)
    service = DecodeService(engine, puller, args.max_requests, kvstore, args.admit_wait)

    def add_servicer(server: grpc.aio.Server, address: str) -> None:
        servicer = DecodeServicer(service, worker_id, args.profiler_dir)
        pb_grpc.add_DecodeWorkerServicer_to_server(servicer, server)
        pb_grpc.add_WorkerControlServicer_to_server(servicer.control, server)

    await serve_worker(args, "decode", SERVICE, worker_id, engine, add_servicer, stop, service,
                       service_metrics=service.metrics)
    await _save_lookahead_state(engine, config)
    if kvstore is not None:
        await kvstore.close()
    await puller.close()
    await engine.close()


async def _save_lookahead_state(engine: AsyncEngine, config: EngineConfig) -> None:
    """The global n-gram trie, for the next start (``--lookahead-state``), once the streams are done."""
    speculator = engine.engine.speculator
    if not config.lookahead_state or speculator is None:
        return
    try:
        await engine.call(save_trie, speculator.drafter.global_trie, config.lookahead_state,
                          engine.engine.layout.model_id)
    except OSError as e:  # lost for the next start, not this shutdown
        logger.error("lookahead trie not saved to %s: %s", config.lookahead_state, e)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, "decode")
    run_service(lambda stop: serve(args, stop))


if __name__ == "__main__":
    main()

"""``make run`` / ``grove run``: the whole stack on localhost with the bundled model; Ctrl-C stops it."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from launcher.stack import Stack, StackConfig

logger = logging.getLogger("launcher")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    p.add_argument("--model", default="", help="local HF model directory (default: bundled SmolLM2)")
    p.add_argument("--prefill", type=int, default=1, help="number of prefill workers")
    p.add_argument("--decode", type=int, default=1, help="number of decode workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--no-nixl", action="store_true", help="move KV over gRPC bytes instead of NIXL")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--kvstore-capacity", default="1GiB")
    p.add_argument("--api-key", default="")
    p.add_argument("--log-dir", default="", help="service logs (default: a temp dir)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = StackConfig(model=args.model, num_prefill=args.prefill, num_decode=args.decode, host=args.host,
                         http_port=args.http_port, grpc_port=args.grpc_port, nixl=not args.no_nixl,
                         dtype=args.dtype, kvstore_capacity=args.kvstore_capacity, api_key=args.api_key,
                         log_dir=args.log_dir)
    stack = Stack(config)
    logger.info("starting kvstore, %d prefill, %d decode workers and the gateway (logs in %s)",
                args.prefill, args.decode, stack.dir)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    url = stack.http_url
    print(f"""
Grove is serving {stack.model_dir}
  OpenAI HTTP : {url}/v1   (models: {url}/v1/models, health: {url}/health, metrics: {url}/metrics)
  gRPC        : {stack.grpc_address}   (grove.v1.Grove, protos/grove/v1/api.proto)
  logs        : {stack.dir}

  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Write a haiku about trees."}}], "max_tokens": 64}}'

Ctrl-C stops everything.""", flush=True)  # noqa: T201
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            dead = [s.name for s in stack.services if s.proc.poll() is not None]
            if dead:
                logger.error("%s exited; stopping the stack. Last lines:\n%s", dead, stack.tail(dead[0]))
                return 1
            time.sleep(0.5)
    finally:
        logger.info("stopping the stack")
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make run`` / ``grove run``: the whole stack on localhost with the bundled model; Ctrl-C stops it."""
from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

from launcher.stack import Stack, StackConfig
from runtime.metric_names import NAMES

logger = logging.getLogger("launcher")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launcher", description=__doc__)
    p.add_argument("--model", default="", help="local HF model directory (default: bundled SmolLM2)")
    p.add_argument("--prefill", type=int, default=1, help="number of prefill workers")
    p.add_argument("--decode", type=int, default=1, help="number of decode workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", "--port", type=int, default=8000, help="the OpenAI HTTP port (0 picks one)")
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--no-nixl", action="store_true", help="move KV over gRPC bytes instead of NIXL")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--kvstore-capacity", default="1GiB")
    p.add_argument("--kvstore-snapshot", default="", metavar="PATH",
                   help="keep the kvstore's cache across restarts: read at start, written when the stack stops "
                        "and every 5 minutes while it serves where it changed (a crash loses only what came after)")
    p.add_argument("--api-key", default="")
    p.add_argument("--log-dir", default="", help="service logs (default: a temp dir)")
    s = p.add_argument_group("serving (vLLM's names; each goes to the services that take it)")
    s.add_argument("--served-model-name", nargs="+", default=[],
                   help="the model ids clients use, the first in responses (default: the folder's name)")
    s.add_argument("--max-model-len", type=int, default=0, help="context length (default: the model's)")
    s.add_argument("--kv-cache-gb", type=float, default=0.5, help="each worker's KV pool")
    s.add_argument("--max-num-seqs", type=int, default=0, help="sequences a worker batches (default: its own)")
    s.add_argument("--lookahead", choices=["on", "off"], default="on", help="the decode workers' lookahead")
    s.add_argument("--lookahead-state", default="", metavar="DIR",
                   help="keep each decode worker's lookahead trie across restarts, in DIR/decode-N.npz")
    s.add_argument("--lookahead-corpus", nargs="+", default=[], metavar="PATH",
                   help="text the decode workers' lookahead drafts from (files or folders; see the README)")
    s.add_argument("--generation-config", default="auto",
                   help="default sampling parameters: auto (the model's), vllm (none) or a folder")
    s.add_argument("--chat-template", default="", help="chat template: a file, or the template itself")
    s.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='tool_choice "auto": the model calls tools in its own format (needs --tool-call-parser)')
    s.add_argument("--tool-call-parser", default="", help="the model's tool-call format: hermes (Qwen2.5, Hermes 2/3), qwen3_coder (Qwen3-Coder's XML), llama3_json (Llama 3.1/3.2), pythonic (Llama 3.2/4) or mistral")
    s.add_argument("--reasoning-parser", default="", help="a reasoning model's thinking to the reasoning field: "
                                                          "deepseek_r1 or qwen3")
    s.add_argument("--pooler-config", default="", help="the embeddings API's pooling (vLLM's JSON: pooling_type, "
                                                       "normalize; default: the model's, else LAST normalised)")
    s.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters beside the base model")
    s.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                   help="adapters served (PEFT directories): name=path or vLLM's JSON form; a request names one as "
                        "its model")
    s.add_argument("--allow-runtime-lora-updating", action="store_true",
                   help="the gateway answers /v1/load_lora_adapter and /v1/unload_lora_adapter")
    s.add_argument("--max-lora-rank", type=int, default=0, help="highest adapter rank (default: the services' 16)")
    s.add_argument("--max-cpu-loras", type=int, default=0, help="adapters each worker keeps loaded (default: 8)")
    s.add_argument("--max-loras", type=int, default=0, help="adapters each worker runs at once (default: 4)")
    s.add_argument("--metrics-names", choices=NAMES, default="",
                   help="every service's /metrics under Grove's names, vLLM's (vllm:...) or both (default: "
                        "$GROVE_METRICS_NAMES, else grove)")
    s.add_argument("--enable-sleep-mode", action="store_true",
                   help="/sleep, /wake_up and /is_sleeping, in development mode (VLLM_SERVER_DEV_MODE=1)")
    s.add_argument("--weight-transfer-config", default="", help="how /update_weights gets weights: "
                   "'{\"backend\": \"disk\"}' (the default, and the only one)")
    x = p.add_argument_group("any other flag of a service, as one string each "
                             "(e.g. --gateway-args '--allowed-origins https://ui.example --allow-credentials')")
    for who in ("gateway", "prefill", "decode", "worker"):
        x.add_argument(f"--{who}-args", default="", help=f"more arguments of {'both workers' if who == 'worker' else who}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stack = Stack(stack_config(args))
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


def stack_config(args: argparse.Namespace) -> StackConfig:
    """The stack the launcher's flags describe."""
    return StackConfig(model=args.model, num_prefill=args.prefill, num_decode=args.decode, host=args.host,
                       http_port=args.http_port, grpc_port=args.grpc_port, nixl=not args.no_nixl,
                       dtype=args.dtype, kvstore_capacity=args.kvstore_capacity,
                       kvstore_snapshot=_absolute(args.kvstore_snapshot) if args.kvstore_snapshot else "",
                       api_key=args.api_key, log_dir=args.log_dir, worker_kv_gb=args.kv_cache_gb,
                       metrics_names=args.metrics_names, **_service_args(args))


def _service_args(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """StackConfig's per-service arguments from the launcher's flags."""
    worker = [*(["--served-model-name", args.served_model_name[0]] if args.served_model_name else []),  # metrics' label
              *(["--max-model-len", str(args.max_model_len)] if args.max_model_len else []),
              *(["--max-num-seqs", str(args.max_num_seqs)] if args.max_num_seqs else []),
              *(["--max-lora-rank", str(args.max_lora_rank)] if args.max_lora_rank else []),
              *(["--max-cpu-loras", str(args.max_cpu_loras)] if args.max_cpu_loras else []),
              *(["--max-loras", str(args.max_loras)] if args.max_loras else []),
              *shlex.split(args.worker_args)]
    gateway = [*(["--served-model-name", *args.served_model_name] if args.served_model_name else []),
               *(["--max-model-len", str(args.max_model_len)] if args.max_model_len else []),
               "--generation-config", args.generation_config,
               *(["--chat-template", args.chat_template] if args.chat_template else []),
               *(["--enable-auto-tool-choice"] if args.enable_auto_tool_choice else []),
               *(["--tool-call-parser", args.tool_call_parser] if args.tool_call_parser else []),
               *(["--reasoning-parser", args.reasoning_parser] if args.reasoning_parser else []),
               *(["--pooler-config", args.pooler_config] if args.pooler_config else []),
               *(["--enable-lora"] if args.enable_lora else []),
               *(["--lora-modules", *args.lora_modules] if args.lora_modules else []),
               *(["--allow-runtime-lora-updating"] if args.allow_runtime_lora_updating else []),
               *(["--enable-sleep-mode"] if args.enable_sleep_mode else []),
               *(["--weight-transfer-config", args.weight_transfer_config] if args.weight_transfer_config else []),
               *(["--max-lora-rank", str(args.max_lora_rank)] if args.max_lora_rank else []),
               *shlex.split(args.gateway_args)]
    prefill = tuple(shlex.split(args.prefill_args))
    return {"extra_worker_args": tuple(worker), "extra_gateway_args": tuple(gateway),
            "extra_decode_args": ("--lookahead", args.lookahead,
                                  *(["--lookahead-corpus", *map(_absolute, args.lookahead_corpus)]
                                    if args.lookahead_corpus else []),
                                  *(["--lookahead-state", _absolute(args.lookahead_state) + "/{worker_id}.npz"]
                                    if args.lookahead_state else []),
                                  *shlex.split(args.decode_args)),
            "prefill_args": tuple(prefill for _ in range(args.prefill))}


def _absolute(path: str) -> str:
    """A path as the services (started in the repository) find it."""
    return str(Path(path).resolve())


if __name__ == "__main__":
    sys.exit(main())

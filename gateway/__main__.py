"""``python -m gateway``: the OpenAI-compatible HTTP server and the grove.v1 gRPC API."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

import grpc
import uvicorn
from prometheus_client import disable_created_metrics

from engine.config import ModelConfig
from engine.errors import InvalidRequestError
from engine.generation_defaults import load_generation_defaults
from engine.paths import default_model_dir
from engine.pooling import PoolingParams, model_pooling, pooling_from_config
from engine.tokenizer import read_chat_template
from gateway.core import GatewayConfig, GatewayCore
from gateway.grpc_api import GroveServicer
from gateway.http_api import Cors, build_app
from gateway.lora import parse_lora_modules
from gateway.response_store import DEFAULT_SIZE
from gateway.reasoning_parsers import REASONING_PARSERS
from gateway.tool_parsers import PARSERS
from gateway.rl_routes import weight_transfer_backend
from gateway.metrics import GatewayMetrics
from gateway.router import Router
from grove.v1 import api_pb2_grpc as pb_grpc
from runtime.grpc_server import create_server, set_serving
from runtime.metric_names import add_metrics_names_arg
from runtime.process import configure_logging, run_service, write_ready_file

logger = logging.getLogger("gateway")
SERVICE = "grove.v1.Grove"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="bind address for HTTP and gRPC")
    p.add_argument("--http-port", "--port", type=int, default=8000, help="OpenAI-compatible HTTP port (0 picks one)")
    p.add_argument("--grpc-port", type=int, default=50051, help="grove.v1 gRPC port (0 picks one)")
    p.add_argument("--prefill", required=True, help="comma-separated prefill worker gRPC addresses; "
                   "dns:NAME:PORT stands for every address NAME resolves to (re-resolved every second)")
    p.add_argument("--decode", required=True, help="comma-separated decode worker gRPC addresses (dns:NAME:PORT too)")
    p.add_argument("--model", default="", help="model directory (tokenizer, config); default: bundled SmolLM2")
    p.add_argument("--served-model-name", nargs="+", default=[],
                   help="model ids clients use, the first in responses (default: directory name)")
    p.add_argument("--max-model-len", type=int, default=0)
    p.add_argument("--block-size", type=int, default=16, help="KV block size (prefix affinity hashing)")
    p.add_argument("--max-concurrent", type=int, default=256, help="requests in flight before HTTP 429")
    p.add_argument("--api-key", default="", help="require 'Authorization: Bearer KEY' on /v1/*")
    t = p.add_argument_group("TLS for HTTP and the public gRPC API (vLLM's flags; the workers' own calls stay "
                             "on the deployment's network)")
    t.add_argument("--ssl-keyfile", default="", help="the server's private key (PEM)")
    t.add_argument("--ssl-certfile", default="", help="the server's certificate chain (PEM)")
    t.add_argument("--ssl-ca-certs", default="", help="CA certificates that sign clients' certificates (PEM)")
    t.add_argument("--ssl-cert-reqs", type=int, default=0, choices=[0, 1, 2],
                   help="clients' certificates: 0 not asked, 1 checked if given, 2 required (Python's ssl.CERT_*)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM: seconds the requests in flight get to finish; the rest then end with an error")
    p.add_argument("--worker-id", default="", help="worker_id label of this gateway's metrics (default: gateway-<pid>)")
    p.add_argument("--ready-file", default="", help="write bound ports here as JSON once serving")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--enable-log-requests", action="store_true",
                   help="log each request's arrival (prompt token ids, sampling parameters) and end (vLLM's flag)")
    p.add_argument("--server-dev-mode", action="store_true",
                   default=os.environ.get("VLLM_SERVER_DEV_MODE", "").lower() in ("1", "true"),
                   help="serve vLLM's development endpoints: POST /reset_prefix_cache, /pause, /resume, "
                        "/update_weights (also VLLM_SERVER_DEV_MODE=1)")
    add_metrics_names_arg(p)
    p.add_argument("--enable-sleep-mode", action="store_true",
                   help="vLLM's: in development mode, POST /sleep?level=1|2 gives back every worker's KV cache (and "
                        "at level 2 its weights) while nothing runs, /wake_up takes them back, GET /is_sleeping")
    p.add_argument("--weight-transfer-config", default="",
                   help="vLLM's: how /update_weights gets new weights; JSON, '{\"backend\": \"disk\"}' (the "
                        "default and the only backend: a checkpoint directory every worker reads)")
    p.add_argument("--enable-profiler", action="store_true", default=bool(os.environ.get("VLLM_TORCH_PROFILER_DIR")),
                   help="serve /start_profile and /stop_profile: torch's profiler on every worker, each writing "
                        "to its --profiler-dir (also VLLM_TORCH_PROFILER_DIR set)")
    p.add_argument("--enable-force-include-usage", action="store_true",
                   help="end every stream with a chunk of its usage, as if it asked with stream_options (vLLM's flag)")
    p.add_argument("--return-tokens-as-token-ids", action="store_true",
                   help='logprobs name their tokens "token_id:<id>" unless a request says otherwise (vLLM\'s flag)')
    p.add_argument("--root-path", default="",
                   help="the path prefix a reverse proxy serves the API under (FastAPI's root_path, vLLM's flag)")
    p.add_argument("--max-log-len", type=int, default=None, help="prompt token ids a logged request shows (default: all)")
    g = p.add_argument_group("LoRA adapters (as vLLM's flags; the workers load them from the same paths)")
    g.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters beside the base model")
    g.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                   help="adapters served from the start: name=path or '{\"name\": ..., \"path\": ...}'; requests "
                        "choose one by its name as their model")
    g.add_argument("--max-lora-rank", type=int, default=16, help="adapters of a higher rank are refused")
    g.add_argument("--allow-runtime-lora-updating", action="store_true",
                   default=os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true"),
                   help="answer /v1/load_lora_adapter and /v1/unload_lora_adapter (also "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
    p.add_argument("--pooler-config", default="",
                   help='the embeddings API\'s pooling, as vLLM\'s: \'{"pooling_type": "LAST"|"MEAN"|"CLS", '
                        '"normalize": true}\' (default: the model\'s sentence-transformers config, else LAST, '
                        'normalised)')
    g = p.add_argument_group("requests' defaults (as vLLM's flags)")
    g.add_argument("--generation-config", default="auto",
                   help="default sampling parameters: 'auto' (the model's generation_config.json), 'vllm' (none) "
                        "or a folder holding a generation_config.json")
    g.add_argument("--override-generation-config", default="",
                   help='JSON object laid over the generation config, e.g. \'{"temperature": 0.5}\'')
    g.add_argument("--chat-template", default="", help="chat template: a file, or the template itself")
    g.add_argument("--default-chat-template-kwargs", type=json.loads, default={},
                   help='JSON object of chat template variables every chat gets unless it sets its own, '
                        'e.g. \'{"enable_thinking": false}\'')
    g.add_argument("--trust-request-chat-template", action="store_true",
                   help="let a request bring its own chat_template (else it gets a 400)")
    g.add_argument("--responses-store-size", type=int, default=DEFAULT_SIZE,
                   help="Responses API responses kept for GET and previous_response_id (0: none)")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='tool_choice "auto": the model may call tools in its own format (needs --tool-call-parser)')
    g.add_argument("--tool-call-parser", choices=sorted(PARSERS), default=None,
                   help="the model's tool-call format: hermes (Qwen2.5, Hermes 2/3), qwen3_coder (Qwen3-Coder's XML), llama3_json (Llama 3.1/3.2), pythonic (Llama 3.2/4) or mistral")
    g.add_argument("--reasoning-parser", choices=sorted(REASONING_PARSERS), default=None,
                   help="a reasoning model's thinking (<think>...</think>) goes to the message's reasoning field: "
                        "deepseek_r1 (DeepSeek-R1, Qwen3 thinking-only models) or qwen3")
    c = p.add_argument_group("CORS (as vLLM's flags: JSON lists, or comma-separated)")
    c.add_argument("--allowed-origins", type=_json_list, default=["*"])
    c.add_argument("--allowed-methods", type=_json_list, default=["*"])
    c.add_argument("--allowed-headers", type=_json_list, default=["*"])
    c.add_argument("--allow-credentials", action="store_true")
    args = p.parse_args(argv)
    args.model = args.model or str(default_model_dir())
    try:  # a bad default or template stops the gateway at start, not each request
        args.sampling_defaults = load_generation_defaults(args.model, args.generation_config,
                                                          args.override_generation_config)
        args.chat_template = read_chat_template(args.chat_template) if args.chat_template else ""
        weight_transfer_backend(args.weight_transfer_config)
    except ValueError as e:
        p.error(str(e))
    if not isinstance(args.default_chat_template_kwargs, dict):
        p.error("--default-chat-template-kwargs must be a JSON object")
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        p.error("--enable-auto-tool-choice needs --tool-call-parser")
    return args


def _json_list(text: str) -> list[str]:
    """A JSON list of strings, as vLLM's flags take, or the same items comma-separated."""
    if not text.lstrip().startswith("["):
        return [v.strip() for v in text.split(",") if v.strip()]
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(text)
    return value


def lora_modules(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """--lora-modules as (name, path) pairs; they need --enable-lora, as in vLLM."""
    if args.lora_modules and not args.enable_lora:
        raise SystemExit("--lora-modules needs --enable-lora")
    try:
        return tuple(parse_lora_modules(args.lora_modules))
    except ValueError as e:
        raise SystemExit(str(e)) from None


def grpc_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    """The public gRPC API's TLS, from the HTTP server's files (None: in the clear)."""
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        raise SystemExit("--ssl-keyfile and --ssl-certfile go together")
    if not args.ssl_certfile:
        if args.ssl_ca_certs or args.ssl_cert_reqs:
            raise SystemExit("--ssl-ca-certs and --ssl-cert-reqs need --ssl-keyfile and --ssl-certfile")
        return None
    try:
        key, chain = Path(args.ssl_keyfile).read_bytes(), Path(args.ssl_certfile).read_bytes()
        roots = Path(args.ssl_ca_certs).read_bytes() if args.ssl_ca_certs else None
    except OSError as e:
        raise SystemExit(f"TLS: {e}") from None
    if args.ssl_cert_reqs and roots is None:
        raise SystemExit("--ssl-cert-reqs checks clients' certificates against --ssl-ca-certs: give it")
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=roots, require_client_auth=args.ssl_cert_reqs == 2)


def pooling(args: argparse.Namespace, model_dir: str) -> PoolingParams:
    """The embeddings API's pooling: --pooler-config over the model's own."""
    own = model_pooling(model_dir)
    try:
        return pooling_from_config(args.pooler_config, own) if args.pooler_config else own
    except ValueError as e:
        raise SystemExit(str(e)) from None


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    model_dir = args.model
    mc = ModelConfig.from_dir(model_dir)
    max_len = min(args.max_model_len or mc.max_position, mc.max_position)
    name, *aliases = args.served_model_name or [model_dir.rstrip("/").rsplit("/", 1)[-1]]
    router = Router([a for a in args.prefill.split(",") if a], [a for a in args.decode.split(",") if a], args.block_size)
    await router.refresh()
    router.start()
    metrics = GatewayMetrics(name, args.worker_id or f"gateway-{os.getpid()}", router, args.metrics_names)
    try:
        core = GatewayCore(GatewayConfig(model_dir, name, max_len, args.max_concurrent, args.sampling_defaults,
                                         args.chat_template, args.trust_request_chat_template, tuple(aliases),
                                         args.tool_call_parser if args.enable_auto_tool_choice else None,
                                         args.reasoning_parser, args.default_chat_template_kwargs, args.enable_log_requests,
                                         args.max_log_len, lora_modules(args), args.max_lora_rank,
                                         args.enable_lora and args.allow_runtime_lora_updating,
                                         pooling(args, model_dir),
                                         force_include_usage=args.enable_force_include_usage,
                                         tokens_as_ids=args.return_tokens_as_token_ids,
                                         dev_mode=args.server_dev_mode, profiler=args.enable_profiler,
                                         sleep_mode=args.enable_sleep_mode),
                           router, metrics)
    except InvalidRequestError as e:  # an adapter of --lora-modules that cannot be served
        raise SystemExit(f"--lora-modules: {e.message}") from None
    server, grpc_port, health = create_server(f"{args.host}:{args.grpc_port}", grpc_credentials(args))
    pb_grpc.add_GroveServicer_to_server(GroveServicer(core), server)
    await server.start()
    await set_serving(health, [SERVICE], True)
    # uvicorn's own shutdown timeout is a backstop: core.drain ends the requests first
    cors = Cors(args.allowed_origins, args.allowed_methods, args.allowed_headers, args.allow_credentials)
    tls = {"ssl_keyfile": args.ssl_keyfile, "ssl_certfile": args.ssl_certfile, "ssl_ca_certs": args.ssl_ca_certs or None,
           "ssl_cert_reqs": args.ssl_cert_reqs} if args.ssl_certfile else {}
    app = build_app(core, args.api_key, cors, args.responses_store_size, args.root_path)
    config = uvicorn.Config(app, host=args.host, port=args.http_port, loop="none", **tls,
                            log_level="warning", lifespan="off", timeout_graceful_shutdown=int(args.drain_timeout) + 10)
    http = uvicorn.Server(config)
    http.install_signal_handlers = lambda: None  # type: ignore[method-assign] - we own the signals
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        if http_task.done():
            await http_task  # raises the bind error
            return
        await asyncio.sleep(0.05)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    write_ready_file(args.ready_file, {"http_port": http_port, "grpc_port": grpc_port})
    logger.info("gateway serving HTTP on %s:%d, gRPC on %s:%d (model %s)", args.host, http_port, args.host, grpc_port, name)
    await stop.wait()
    # both servers stop taking requests at once; those in flight get --drain-timeout to finish
    logger.info("draining: %d requests in flight, up to %.0f s", core.admission.in_flight, args.drain_timeout)
    await set_serving(health, [SERVICE], False)
    http.should_exit = True
    grpc_stopped = asyncio.create_task(server.stop(grace=args.drain_timeout + 10.0))
    await core.admission.drain(args.drain_timeout)
    await asyncio.gather(http_task, grpc_stopped, return_exceptions=True)
    await router.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, "gateway")
    disable_created_metrics()  # no *_created series beside every counter and histogram
    run_service(lambda stop: serve(args, stop))


if __name__ == "__main__":
    main()

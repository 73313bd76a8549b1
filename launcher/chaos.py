"""A random mix of requests against a real stack, with a fault injected mid-way; then the checks that
nothing was lost. ``python -m launcher.chaos --help``.

The mix: completions, chat and responses over HTTP, and Generate / GenerateStream over gRPC;
streamed or not; ``n`` 2-3, logprobs, stop strings, seeds, penalties, cache salts, ``json_object``,
lookahead on and off; prompts from the bundled datasets, some longer than the context. A quarter of
the clients leave early (mid-stream, or by a timeout).

The checks, after the mix:
- every answer is one a client may get: 200, left by its client, a 400 for a prompt over the
  context, or (after the gateway's SIGTERM) a refused connection; a stream ends with its end marker
  or an error event, never silently;
- every process is back to idle: no KV block in use, nothing running or waiting, no lease;
- greedy requests sent again, alone, give the same token ids as under load;
- (from the command line) no service logged an error.

Faults (``--fault``): ``kill`` SIGKILLs decode-1, then SIGTERMs prefill-1; ``kvstore`` SIGKILLs the
kvstore and starts a new one on its port; ``freeze`` stops (SIGSTOP) decode-1, prefill-0 and the
kvstore in turn and wakes them; ``gateway-term`` SIGTERMs the gateway.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc
import httpx

from bench.datasets.humaneval import completion_prompts
from bench.datasets.shakespeare import quote_prompts
from bench.datasets.sharegpt import first_turn_prompts
from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack, StackConfig
from launcher.stack_probe import wait_idle

logger = logging.getLogger("chaos")
MAX_TOKENS = (1, 2, 16, 64, 128, 200)


@dataclass(slots=True)
class Probe:
    """One request of the mix. ``body``: the JSON body (HTTP) or GenerateRequest (gRPC)."""

    api: str  # "/v1/completions", "/v1/chat/completions", "/v1/responses" or "grpc"
    body: Any
    stream: bool
    leave_after: float | None  # seconds (unary) or chunks (stream) after which the client leaves

    @property
    def greedy(self) -> bool:
        if self.api == "grpc":
            return self.body.sampling.temperature == 0.0
        return self.body.get("temperature") == 0 and "n" not in self.body and self.api != "/v1/responses"


@dataclass(slots=True)
class Outcome:
    probe: Probe
    status: str  # "200", "left", "400", "INVALID_ARGUMENT", ...
    detail: str = ""
    token_ids: list[list[int]] | None = None  # per choice, for greedy requests that finished


def make_mix(rng: random.Random, n: int, grpc_share: float = 0.3, max_tokens: tuple[int, ...] = MAX_TOKENS,
             leaving_tokens: int = 0) -> list[Probe]:
    """``leaving_tokens``: the clients that leave early ask for this many tokens, past EOS (0: as
    the others), so that a request not stopped when its client leaves is still running after the
    mix, holding its KV, where the idle check finds it."""
    code = [p.text or "" for p in completion_prompts()[:20]]
    chats = [p.openai_messages() for p in first_turn_prompts()[:40]]
    quotes = [p.text if p.text is not None else p.openai_messages()[-1]["content"] for p in quote_prompts()[:6]]
    probes = [(_grpc_probe if rng.random() < grpc_share else _http_probe)(rng, code, chats, quotes, max_tokens)
              for _ in range(n)]
    for p in probes:
        if leaving_tokens and p.leave_after is not None:
            if p.api == "grpc":
                p.body.sampling.max_tokens, p.body.sampling.ignore_eos = leaving_tokens, True
            elif p.api == "/v1/responses":
                p.body["max_output_tokens"] = leaving_tokens
            else:
                p.body.update(max_tokens=leaving_tokens, ignore_eos=True)
    return probes


def _http_probe(rng: random.Random, code: list[str], chats: list[list[dict[str, str]]], quotes: list[str],
                max_tokens: tuple[int, ...]) -> Probe:
    api = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/chat/completions", "/v1/responses"])
    body: dict[str, Any] = {"max_tokens": rng.choice(max_tokens)}
    if rng.random() < 0.5:
        body["temperature"] = 0
    else:
        body.update(temperature=rng.choice([0.7, 1.0]), seed=rng.randrange(1000), top_p=rng.choice([1.0, 0.9]))
    if rng.random() < 0.3:
        body["lookahead"] = rng.random() < 0.5
    if rng.random() < 0.2:
        body["stop"] = rng.choice([["\n\n"], ["def"], [" the", "."]])
    if api != "/v1/responses":
        if rng.random() < 0.2:
            body["n"] = rng.choice([2, 3])
        if rng.random() < 0.2:
            body.update({"logprobs": True, "top_logprobs": 2} if api == "/v1/chat/completions" else {"logprobs": 2})
        body["return_token_ids"] = True
    if api == "/v1/completions":
        body["prompt"] = rng.choice(code + [q[:4000] for q in quotes])
    elif api == "/v1/chat/completions":
        body["messages"] = rng.choice(chats) if rng.random() < 0.7 else [{"role": "user", "content": rng.choice(quotes)}]
        if rng.random() < 0.1:
            body["response_format"] = {"type": "json_object"}
    else:
        body["input"] = rng.choice(chats)[0]["content"] if rng.random() < 0.8 else rng.choice(code)
        body["max_output_tokens"] = body.pop("max_tokens")
    if rng.random() < 0.15:  # a tenant's own prefix cache and drafts
        body["cache_salt"] = rng.choice(["tenant-a", "tenant-b"])
    if rng.random() < 0.15:  # penalised rows in draft trees
        body.update(rng.choice([{"repetition_penalty": 1.2}, {"frequency_penalty": 0.8}, {"presence_penalty": 1.0}]))
    stream = rng.random() < 0.6
    body["stream"] = stream
    if stream and api != "/v1/responses" and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    return Probe(api, body, stream, _leave_after(rng, stream))


def _grpc_probe(rng: random.Random, code: list[str], chats: list[list[dict[str, str]]], quotes: list[str],
                max_tokens: tuple[int, ...]) -> Probe:
    sampling = pb.SamplingParams(max_tokens=rng.choice(max_tokens))
    if rng.random() < 0.5:
        sampling.temperature = 0.0
    else:
        sampling.temperature, sampling.seed = rng.choice([0.7, 1.0]), rng.randrange(1000)
    if rng.random() < 0.3:
        sampling.lookahead = rng.random() < 0.5
    if rng.random() < 0.2:
        sampling.stop.extend(rng.choice([["\n\n"], ["def"]]))
    if rng.random() < 0.15:
        sampling.logprobs = 2
    if rng.random() < 0.15:
        sampling.repetition_penalty = 1.2
    req = pb.GenerateRequest(sampling=sampling)
    if rng.random() < 0.15:
        req.cache_salt = rng.choice(["tenant-a", "tenant-b"])
    if rng.random() < 0.4:
        req.prompt = rng.choice(code + [q[:4000] for q in quotes])
    else:
        req.chat.messages.extend(pb.ChatMessage(role=m["role"], content=m["content"]) for m in rng.choice(chats))
    stream = rng.random() < 0.6
    return Probe("grpc", req, stream, _leave_after(rng, stream))


def _leave_after(rng: random.Random, stream: bool) -> float | None:
    if rng.random() >= 0.25:
        return None
    return float(rng.randint(0, 6)) if stream else rng.uniform(0.05, 1.5)


# ---- running the mix ---------------------------------------------------------------------------
async def run_mix(http_url: str, grpc_address: str, probes: list[Probe], concurrency: int) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=http_url, timeout=300) as client, \
            grpc.aio.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.GroveStub(channel)

        async def one(p: Probe) -> Outcome:
            async with gate:
                try:
                    return await (_grpc(stub, p) if p.api == "grpc" else _http(client, p))
                except (httpx.HTTPError, OSError) as e:  # refused or dropped connections
                    return Outcome(p, type(e).__name__, str(e)[:200])

        return list(await asyncio.gather(*(one(p) for p in probes)))


async def _http(client: httpx.AsyncClient, p: Probe) -> Outcome:
    if not p.stream:
        if p.leave_after is not None:
            try:
                await asyncio.wait_for(client.post(p.api, json=p.body), p.leave_after)
            except asyncio.TimeoutError:
                return Outcome(p, "left")
            return Outcome(p, "200")
        r = await client.post(p.api, json=p.body)
        if r.status_code != 200:
            return Outcome(p, str(r.status_code), r.text[:300])
        choices = r.json().get("choices")
        return Outcome(p, "200", token_ids=[c.get("token_ids") or [] for c in choices] if choices else None)
    ids: dict[int, list[int]] = {}
    chunks, ended = 0, False
    async with client.stream("POST", p.api, json=p.body) as r:
        if r.status_code != 200:
            return Outcome(p, str(r.status_code), (await r.aread()).decode()[:300])
        async for line in r.aiter_lines():
            if line == "data: [DONE]" or line.startswith(("event: response.completed", "event: response.incomplete")):
                ended = True
            if not line.startswith("data: {"):
                continue
            chunks += 1
            if p.leave_after is not None and chunks >= p.leave_after:
                return Outcome(p, "left")
            obj = json.loads(line[6:])
            if obj.get("error") or obj.get("type") in ("error", "response.failed"):
                return Outcome(p, "stream-error", line[:300])
            for c in obj.get("choices") or []:
                ids.setdefault(c["index"], []).extend(c.get("token_ids") or [])
    if not ended:
        return Outcome(p, "stream-cut", f"ended after {chunks} chunks without its end marker")
    return Outcome(p, "200", token_ids=[ids[i] for i in sorted(ids)])


async def _grpc(stub: pb_grpc.GroveStub, p: Probe) -> Outcome:
    try:
        if not p.stream:
            if p.leave_after is not None:
                try:
                    await asyncio.wait_for(stub.Generate(p.body, timeout=300), p.leave_after)
                except asyncio.TimeoutError:
                    return Outcome(p, "left")
                return Outcome(p, "200")
            resp = await stub.Generate(p.body, timeout=300)
            return Outcome(p, "200", token_ids=[list(resp.token_ids)])
        call = stub.GenerateStream(p.body, timeout=300)
        ids: list[int] = []
        finished, messages = False, 0
        async for msg in call:
            ids.extend(msg.token_ids)
            finished, messages = bool(msg.finish_reason), messages + 1
            if p.leave_after is not None and messages >= p.leave_after:
                call.cancel()
                return Outcome(p, "left")
        if not finished:
            return Outcome(p, "stream-cut", "ended without a finish reason")
        return Outcome(p, "200", token_ids=[ids])
    except grpc.aio.AioRpcError as e:
        return Outcome(p, e.code().name, (e.details() or "")[:300])


# ---- the checks --------------------------------------------------------------------------------
def unexpected(outcomes: list[Outcome], gateway_stopped: bool = False) -> list[Outcome]:
    """The answers no client should get: anything but 200, left, a 400 for a prompt over the
    context, or a refused connection once the gateway was shut down."""
    def expected(o: Outcome) -> bool:
        if o.status in ("200", "left"):
            return True
        if o.status in ("400", "INVALID_ARGUMENT") and "context length" in o.detail:
            return True
        return gateway_stopped and (o.status in ("ConnectError", "UNAVAILABLE") and
                                    ("refused" in o.detail or "connect" in o.detail.lower()))
    return [o for o in outcomes if not expected(o)]


async def recheck_greedy(http_url: str, grpc_address: str, outcomes: list[Outcome], limit: int = 25) -> tuple[int, list[str]]:
    """Sends greedy requests that finished again, one at a time; (how many, their differences)."""
    done = [o for o in outcomes if o.status == "200" and o.token_ids and o.probe.greedy][:limit]
    differ: list[str] = []
    async with httpx.AsyncClient(base_url=http_url, timeout=300) as client, \
            grpc.aio.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.GroveStub(channel)
        for o in done:
            p = o.probe
            if p.api == "grpc":
                alone = [list((await stub.Generate(p.body, timeout=300)).token_ids)]
            else:
                body = {**p.body, "stream": False}
                body.pop("stream_options", None)
                alone = [c["token_ids"] for c in (await client.post(p.api, json=body)).json()["choices"]]
            if alone != o.token_ids:
                differ.append(f"{p.api} {str(p.body)[:200]}: under load {o.token_ids}, alone {alone}")
    return len(done), differ


def logged_errors(log_dir: Path) -> list[str]:
    """Lines of the stack's logs that report an error or a traceback."""
    out = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if " ERROR " in line or line.startswith("Traceback") or "CRITICAL" in line:
                out.append(f"{path.name}: {line[:300]}")
    return out


# ---- faults ------------------------------------------------------------------------------------
def _signal(stack: Stack, name: str, sig: signal.Signals) -> None:
    logger.info("%s to %s", sig.name, name)
    os.kill(stack.service(name).proc.pid, sig)


async def _kill(stack: Stack) -> None:
    await asyncio.sleep(25)
    _signal(stack, "decode-1", signal.SIGKILL)
    await asyncio.sleep(20)
    _signal(stack, "prefill-1", signal.SIGTERM)


async def _restart_kvstore(stack: Stack) -> None:
    await asyncio.sleep(20)
    old = stack.service("kvstore")
    _signal(stack, "kvstore", signal.SIGKILL)
    await asyncio.sleep(8)
    await asyncio.to_thread(stack.start_kvstore, old.info["grpc_port"])
    logger.info("kvstore started again on port %d", old.info["grpc_port"])


async def _freeze(stack: Stack) -> None:
    await asyncio.sleep(20)
    for name, seconds in (("decode-1", 10), ("prefill-0", 8), ("kvstore", 8)):
        _signal(stack, name, signal.SIGSTOP)
        await asyncio.sleep(seconds)
        _signal(stack, name, signal.SIGCONT)
        await asyncio.sleep(10)


async def _gateway_term(stack: Stack) -> None:
    await asyncio.sleep(25)
    _signal(stack, "gateway", signal.SIGTERM)


FAULTS: dict[str, Callable[[Stack], Awaitable[None]] | None] = {
    "none": None, "kill": _kill, "kvstore": _restart_kvstore, "freeze": _freeze, "gateway-term": _gateway_term,
}


# ---- the command -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launcher.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=120)
    p.add_argument("--concurrency", type=int, default=12)
    p.add_argument("--fault", choices=sorted(FAULTS), default="none")
    p.add_argument("--grpc-share", type=float, default=0.3, help="share of the requests sent over gRPC")
    p.add_argument("--long", action="store_true", help="outputs of up to 600 tokens too")
    p.add_argument("--leaving-tokens", type=int, default=0,
                   help="the clients that leave early ask for this many tokens (0: as the others)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--worker-kv-gb", type=float, default=0.06, help="each worker's KV pool (tight: memory pressure)")
    p.add_argument("--log-dir", default="", help="the stack's logs (default: a temp dir)")
    return p.parse_args(argv)


async def probe(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    probes = make_mix(rng, args.requests, args.grpc_share, MAX_TOKENS + ((400, 600) if args.long else ()),
                      args.leaving_tokens)
    config = StackConfig(num_prefill=2, num_decode=2, dtype=args.dtype, worker_kv_gb=args.worker_kv_gb,
                         log_dir=args.log_dir)
    with Stack(config) as stack:
        fault = FAULTS[args.fault]
        injected = asyncio.create_task(fault(stack)) if fault is not None else None
        t0 = time.monotonic()
        outcomes = await run_mix(stack.http_url, stack.grpc_address, probes, args.concurrency)
        logger.info("mix done in %.1f s", time.monotonic() - t0)
        if injected is not None:
            await injected
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        logger.info("answers: %s", counts)
        bad = unexpected(outcomes, gateway_stopped=args.fault == "gateway-term")
        for o in bad:
            logger.error("unexpected: %s %s: %s", o.probe.api, o.status, o.detail)
        snapshot = wait_idle(stack, 30)
        busy = {k: v for k, v in snapshot.items() if v != (0, 0, 0)}
        logger.info("idle after the mix: %s", "yes" if not busy else f"NO: {busy}")
        differ: list[str] = []
        if args.fault != "gateway-term":
            checked, differ = await recheck_greedy(stack.http_url, stack.grpc_address, outcomes)
            logger.info("greedy requests sent again alone: %d, differing: %d", checked, len(differ))
            for d in differ:
                logger.error("greedy differs: %s", d)
        log_dir = stack.dir
    errors = logged_errors(log_dir)
    for line in errors:
        logger.error("logged: %s", line)
    logger.info("error lines in the stack's logs: %d (%s)", len(errors), log_dir)
    return int(bool(bad or busy or differ or errors))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise SystemExit(asyncio.run(probe(parse_args(argv))))


if __name__ == "__main__":
    main()

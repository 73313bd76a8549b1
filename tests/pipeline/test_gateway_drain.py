"""A gateway shut down (SIGTERM, a rolling restart) lets its streams finish for --drain-timeout;
those still running then end with an error that says why, and the workers free their KV."""
from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest

from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack
from launcher.stack_probe import wait_idle
from tests.pipeline.gateway_process import Gateway


@pytest.fixture
def gateway_factory(stack: Stack, tmp_path: Path) -> Iterator[Any]:
    made: list[Gateway] = []

    def make(drain_timeout: float) -> Gateway:
        home = tmp_path / str(len(made))
        home.mkdir()
        made.append(Gateway(stack, home, "--drain-timeout", str(drain_timeout)))
        return made[-1]

    yield make
    for g in made:
        g.stop()


def _http_stream(gw: Gateway, prompt: str, max_tokens: int, started: threading.Event) -> dict[str, Any]:
    """A streamed completion: its token ids, finish reason, error event and [DONE]."""
    out: dict[str, Any] = {"ids": [], "finish": None, "error": None, "done": False}
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "return_token_ids": True}
    chunks = 0
    with httpx.stream("POST", gw.http_url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]
                    continue
                out["ids"] += chunk["choices"][0].get("token_ids") or []
                out["finish"] = chunk["choices"][0]["finish_reason"] or out["finish"]
                chunks += 1
                if chunks >= 3:  # the prefill worker's token, then two of the decode worker's
                    started.set()
    return out


def _grpc_stream(gw: Gateway, prompt: str, max_tokens: int, started: threading.Event) -> dict[str, Any]:
    out: dict[str, Any] = {"ids": [], "finish": None, "error": None}
    req = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                      ignore_eos=True))
    with grpc.insecure_channel(gw.grpc_address) as ch:
        try:
            for i, msg in enumerate(pb_grpc.GroveStub(ch).GenerateStream(req, timeout=120)):
                out["ids"] += list(msg.token_ids)
                out["finish"] = msg.finish_reason or out["finish"]
                if i >= 2:
                    started.set()
        except grpc.RpcError as e:
            out["error"] = (e.code(), e.details())
    return out


def _streams_through_sigterm(gw: Gateway, max_tokens: int) -> tuple[list[dict[str, Any]], float]:
    """Two HTTP and two gRPC streams; SIGTERM to the gateway once each is decoding. Their
    outcomes, and the seconds the gateway took to exit."""
    prompts = [f"Write a long letter to friend number {k}." for k in range(4)]
    started = [threading.Event() for _ in prompts]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_http_stream if k < 2 else _grpc_stream, gw, p, max_tokens, e)
                   for k, (p, e) in enumerate(zip(prompts, started))]
        assert all(e.wait(60) for e in started), [f.result() for f in futures if f.done()]
        gw.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        results = [f.result() for f in futures]
    assert gw.proc.wait(60) == 0, gw.log.read_text()
    return results, time.monotonic() - t0


def test_a_gateway_shut_down_finishes_its_streams(stack: Stack, gateway_factory: Any) -> None:
    gw = gateway_factory(drain_timeout=60)
    results, _ = _streams_through_sigterm(gw, max_tokens=40)
    for r in results:
        assert r["error"] is None and r["finish"] == "length" and len(r["ids"]) == 40, r
    assert all(r["done"] for r in results[:2])
    assert "draining: 4 requests in flight" in gw.log.read_text()


def test_streams_outlasting_the_gateways_drain_end_with_an_error_that_says_so(stack: Stack,
                                                                              gateway_factory: Any) -> None:
    """Cut off by --drain-timeout: each stream gets an error naming the shutdown (an SSE error
    event; gRPC UNAVAILABLE), not a dropped connection, and the workers free the requests' KV."""
    gw = gateway_factory(drain_timeout=1)
    results, took = _streams_through_sigterm(gw, max_tokens=1500)
    for r in results[:2]:
        assert r["error"] is not None and "drain timeout" in r["error"]["message"], r["error"]
        assert r["finish"] is None and not r["done"] and 0 < len(r["ids"]) < 1500
    for r in results[2:]:
        assert r["error"] is not None, r["finish"]
        code, details = r["error"]
        assert code == grpc.StatusCode.UNAVAILABLE and "drain timeout" in details, r["error"]
        assert r["finish"] is None and 0 < len(r["ids"]) < 1500
    assert took < 15, took  # the drain's 1 s, then the errors' delivery (5 s at most)
    assert "drain timeout: 4 requests still in flight" in gw.log.read_text()
    snap = wait_idle(stack)
    assert all(v == (0, 0, 0) for v in snap.values()), snap

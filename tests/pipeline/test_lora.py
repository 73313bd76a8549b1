"""LoRA adapters through the whole pipeline, as vLLM serves them: a gateway started with
``--enable-lora --lora-modules all=PATH --allow-runtime-lora-updating`` in front of the stack's
workers (which load each adapter from its path on first use). A request names its adapter as its
model; its greedy output equals transformers + PEFT's, token for token, over HTTP and gRPC; its
KV is its own in the workers' caches and the kvstore; adapters are listed, loaded and unloaded."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack
from launcher.stack_probe import wait_idle
from tests.lora_adapters import peft_greedy, peft_last_hidden
from tests.pipeline.gateway_process import Gateway

MODEL = "SmolLM2-135M-Instruct"
MAX_TOKENS = 20
MESSAGES = [{"role": "user", "content": "Write a haiku about trees."}]


@pytest.fixture(scope="module")
def gateway(stack: Stack, lora_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(stack, tmp_path_factory.mktemp("lora-gateway"), "--enable-lora", "--lora-modules",
                 f"all={lora_dirs['all']}", "--allow-runtime-lora-updating")
    yield gw
    gw.stop()


def _chat(url: str, model: str, **more: Any) -> dict[str, Any]:
    r = httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS,
                                                       "temperature": 0, "return_token_ids": True, **more}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_adapters_are_listed_with_their_base_model(gateway: Gateway, lora_dirs: dict[str, Path]) -> None:
    client = openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused")
    cards = {m.id: m.model_extra for m in client.models.list().data}
    assert list(cards) == [MODEL, "all"]
    assert cards["all"]["parent"] == MODEL and cards["all"]["root"] == str(lora_dirs["all"])
    assert cards[MODEL]["parent"] is None
    assert client.models.retrieve("all").model_extra["parent"] == MODEL


def test_an_adapter_answers_as_peft_does_over_http_and_grpc(stack: Stack, gateway: Gateway, model_dir: Path,
                                                            tokenizer: Any, lora_dirs: dict[str, Path]) -> None:
    """model "all": PEFT's greedy tokens, whole and streamed, and the response names the adapter;
    the base model's name on the same gateway: transformers' own."""
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    adapter, base = (peft_greedy(model_dir, path, [prompt], MAX_TOKENS)[0] for path in (lora_dirs["all"], None))
    assert adapter != base, "the adapter changes this answer (else the test would not see it applied)"
    whole = _chat(gateway.http_url, "all")
    assert whole["model"] == "all" and whole["choices"][0]["token_ids"] == adapter
    client = openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", timeout=120)
    stream = client.chat.completions.create(model="all", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        whole["choices"][0]["message"]["content"]
    plain = _chat(gateway.http_url, MODEL)
    assert plain["model"] == MODEL and plain["choices"][0]["token_ids"] == base
    with grpc.insecure_channel(gateway.grpc_address) as ch:
        stub = pb_grpc.GroveStub(ch)
        resp = stub.Generate(pb.GenerateRequest(model="all", prompt_token_ids=pb.TokenIds(ids=prompt),
                                                sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0)))
        assert list(resp.token_ids) == adapter
        assert [m.parent for m in stub.ListModels(pb.ListModelsRequest()).models] == ["", MODEL]
    wait_idle(stack)


def test_an_adapters_kv_is_its_own_in_every_cache(stack: Stack, gateway: Gateway, tokenizer: Any) -> None:
    """A prompt computed with the adapter is not read by the base model (nor the reverse), in the
    workers' caches and the kvstore alike; each finds its own again."""
    ids = tokenizer(f"{uuid.uuid4()}: the rivers of Europe, from west to east. " * 6)["input_ids"]

    def cached(model: str) -> int:
        r = httpx.post(gateway.http_url + "/v1/completions",
                       json={"model": model, "prompt": ids, "max_tokens": 2, "temperature": 0}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    first = [cached("all"), cached(MODEL)]
    again = [cached("all"), cached(MODEL)]
    assert first == [0, 0], "the base model read the adapter's KV"
    assert min(again) >= 16 * 4, again  # each found its own prompt again (most of its full blocks)
    snapshot = wait_idle(stack)
    assert all(v == (0, 0, 0) for v in snapshot.values()), snapshot


def test_adapters_load_and_unload_at_run_time(stack: Stack, gateway: Gateway, model_dir: Path, tokenizer: Any,
                                              lora_dirs: dict[str, Path]) -> None:
    url = gateway.http_url

    def post(path: str, **body: Any) -> httpx.Response:
        return httpx.post(url + path, json=body, timeout=60)

    r = post("/v1/load_lora_adapter", lora_name="qvd", lora_path=str(lora_dirs["qvd"]))
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'qvd' added successfully."
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    assert _chat(url, "qvd")["choices"][0]["token_ids"] == peft_greedy(model_dir, lora_dirs["qvd"], [prompt],
                                                                       MAX_TOKENS)[0]
    again = post("/v1/load_lora_adapter", lora_name="qvd", lora_path=str(lora_dirs["qvd"]))
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    bad = post("/v1/load_lora_adapter", lora_name="bad", lora_path=str(lora_dirs["qvd"] / "nowhere"))
    assert bad.status_code == 400 and "no such directory" in bad.json()["error"]["message"]
    assert post("/v1/unload_lora_adapter", lora_name="qvd").status_code == 200
    gone = httpx.post(url + "/v1/chat/completions", json={"model": "qvd", "messages": MESSAGES}, timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "model"
    assert "'qvd' is not served here" in gone.json()["error"]["message"]
    assert post("/v1/unload_lora_adapter", lora_name="qvd").status_code == 404
    # the stack's own gateway was not started to allow it: vLLM's switch is off by default
    refused = httpx.post(stack.http_url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"})
    assert refused.status_code == 400 and "--allow-runtime-lora-updating" in refused.json()["error"]["message"]
    wait_idle(stack)


def _lora_info(stack: Stack) -> list[dict[str, str]]:
    """grove:lora_requests_info's labels on each decode worker's /metrics."""
    out = []
    for name in ("decode-0", "decode-1"):
        text = httpx.get(f"http://127.0.0.1:{stack.service(name).info['metrics_port']}/metrics", timeout=10).text
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == "grove:lora_requests_info"]
        (sample,) = family.samples
        out.append(sample.labels)
    return out


def test_the_workers_metrics_name_the_running_adapters(stack: Stack, gateway: Gateway) -> None:
    """vLLM's lora_requests_info: while a request of "all" decodes, its worker names it running."""
    body = {"model": "all", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", gateway.http_url + "/v1/completions", json=body, timeout=120) as r:
        chunks = (line for line in r.iter_lines() if line.startswith("data:"))
        for _ in range(3):  # past the prefill worker's first token: the decode worker streams now
            next(chunks)
        during = _lora_info(stack)
    assert sorted(info["running_lora_adapters"] for info in during) == ["", "all"], during
    assert all(info["max_lora"] == "4" and info["waiting_lora_adapters"] == "" for info in during)
    deadline = time.monotonic() + 20  # the stream's end reaches the worker as a cancel
    while any(info["running_lora_adapters"] for info in _lora_info(stack)):
        assert time.monotonic() < deadline, "the cancelled request still runs"
        time.sleep(0.1)
    wait_idle(stack)


def test_an_adapters_embeddings_are_pefts(gateway: Gateway, model_dir: Path, tokenizer: Any,
                                          lora_dirs: dict[str, Path]) -> None:
    ids = tokenizer("A haiku about trees.")["input_ids"]
    r = httpx.post(gateway.http_url + "/v1/embeddings", json={"model": "all", "input": ids, "encoding_format": "float"},
                   timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "all", r.text
    got = torch.tensor(r.json()["data"][0]["embedding"])
    assert (got - peft_last_hidden(model_dir, lora_dirs["all"], ids)).abs().max() < 1e-4
    assert (got - peft_last_hidden(model_dir, None, ids)).abs().max() > 1e-2  # the adapter changed it

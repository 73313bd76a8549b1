"""OpenAI's embeddings API through the stack, as the openai SDK and vLLM's clients call it: each
input's vector equals transformers' final hidden state of its last token, normalised (the default
pooling for a model without a sentence-transformers config), whatever form the input takes."""
from __future__ import annotations

import base64
import uuid
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
import torch

from launcher.stack import Stack
from launcher.stack_probe import wait_idle
from tests.observability.conftest import scrape, total

MODEL = "SmolLM2-135M-Instruct"
TEXTS = ["A haiku about trees.", "The river runs to the sea; " * 40]


def _hf(hf_model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        last = hf_model.model(torch.tensor([ids])).last_hidden_state[0, -1].float()
    return torch.nn.functional.normalize(last, dim=0).numpy()


def _close(got: Any, want: np.ndarray) -> bool:
    return bool(np.abs(np.asarray(got, dtype=np.float32) - want).max() < 1e-4)


def _post(stack: Stack, **body: Any) -> httpx.Response:
    return httpx.post(stack.http_url + "/v1/embeddings", json={"model": MODEL, **body}, timeout=120)


def test_the_sdk_gets_transformers_vectors_in_input_order(stack: Stack, hf_model: Any, tokenizer: Any) -> None:
    client = openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", timeout=120)
    out = client.embeddings.create(model=MODEL, input=TEXTS)  # (the SDK asks for base64 and decodes it)
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert [d.index for d in out.data] == [0, 1] and out.model == MODEL
    for d, prompt in zip(out.data, ids):
        assert len(d.embedding) == 576 and _close(d.embedding, _hf(hf_model, prompt))
    assert out.usage.prompt_tokens == out.usage.total_tokens == sum(map(len, ids))
    wait_idle(stack)


def test_each_input_is_a_request_in_the_gateways_metrics(stack: Stack) -> None:
    """Each input counts as a request of its own: its prompt tokens and cache lookups, an
    end-to-end latency, a success ("stop", as vLLM's pooling requests finish); no generated token,
    no time to first token."""
    wait_idle(stack)
    address = stack.http_url.removeprefix("http://")
    before = scrape(address)
    r = _post(stack, input=TEXTS)
    assert r.status_code == 200, r.text
    after = scrape(address)

    def grew(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    assert grew("grove:prompt_tokens_total") == r.json()["usage"]["prompt_tokens"] > 0
    assert grew("grove:prefix_cache_queries_total") == r.json()["usage"]["prompt_tokens"]
    assert grew("grove:request_success_total", finished_reason="stop") == 2
    assert grew("grove:e2e_request_latency_seconds_count") == grew("grove:request_prefill_time_seconds_count") == 2
    assert grew("grove:generation_tokens_total") == grew("grove:time_to_first_token_seconds_count") == 0


def test_every_input_form_gives_the_same_vectors(stack: Stack, tokenizer: Any) -> None:
    """Text, token ids, lists of either, base64 or floats, and vLLM's chat messages; vLLM's /pooling."""
    ids = tokenizer(TEXTS[0])["input_ids"]
    floats = _post(stack, input=TEXTS[0], encoding_format="float").json()["data"][0]["embedding"]
    raw = _post(stack, input=TEXTS[0], encoding_format="base64").json()["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(raw), dtype="<f4"), np.asarray(floats, dtype=np.float32))
    for form in (ids, [ids], [TEXTS[0], ids]):
        data = _post(stack, input=form).json()["data"]
        assert all(_close(d["embedding"], np.asarray(floats)) for d in data), form
    messages = [{"role": "user", "content": TEXTS[0]}]
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    templated = list(templated["input_ids"] if hasattr(templated, "keys") else templated)
    chat = _post(stack, messages=messages).json()
    assert _close(chat["data"][0]["embedding"], np.asarray(_post(stack, input=templated).json()["data"][0]["embedding"]))
    assert chat["usage"]["prompt_tokens"] == len(templated)
    # vLLM's generic /pooling: the same vector, as "data"
    r = httpx.post(stack.http_url + "/pooling", json={"model": MODEL, "input": TEXTS[0]}, timeout=120)
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert item["object"] == "pooling" and r.json()["id"].startswith("pool-") and _close(item["data"], np.asarray(floats))


def test_a_prompt_embedded_again_reads_its_prefix_from_the_caches(stack: Stack, tokenizer: Any) -> None:
    text = f"{uuid.uuid4()} " + TEXTS[1]
    first, again = (_post(stack, input=text, encoding_format="float").json() for _ in range(2))
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 32
    assert _close(again["data"][0]["embedding"], np.asarray(first["data"][0]["embedding"]))
    snapshot = wait_idle(stack)
    assert all(v == (0, 0, 0) for v in snapshot.values()), snapshot


@pytest.mark.parametrize("body, status, field", [
    ({"input": "hi", "dimensions": 64}, 400, "dimensions"),
    ({"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": []}, 400, "input"),
    ({"input": [1, "a"]}, 400, "input"),
    ({}, 400, "input"),
    ({"input": "hi", "normalize": "yes"}, 400, "normalize"),
    ({"input": "hi", "model": "text-embedding-3-small"}, 404, "model"),
    ({"input": [10**8]}, 400, "prompt"),
])
def test_bad_requests_name_their_field(stack: Stack, body: dict, status: int, field: str) -> None:
    r = httpx.post(stack.http_url + "/v1/embeddings", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == field, r.text


def test_grpc_embed_gives_the_http_vector(stack: Stack) -> None:
    from grove.v1 import api_pb2 as pb
    from grove.v1 import api_pb2_grpc as pb_grpc

    http = _post(stack, input=TEXTS[0], encoding_format="float").json()["data"][0]["embedding"]
    with grpc.insecure_channel(stack.grpc_address) as ch:
        stub = pb_grpc.GroveStub(ch)
        resp = stub.Embed(pb.EmbedRequest(prompt=TEXTS[0], request_id="mine"))
        assert resp.request_id == "mine" and _close(list(resp.embedding), np.asarray(http))
        raw = stub.Embed(pb.EmbedRequest(prompt=TEXTS[0], normalize=False))
        assert abs(np.linalg.norm(np.asarray(raw.embedding)) - 1) > 0.5  # the hidden state as it is
        with pytest.raises(grpc.RpcError) as e:
            stub.Embed(pb.EmbedRequest(model="nope", prompt="hi"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model" in e.value.details()

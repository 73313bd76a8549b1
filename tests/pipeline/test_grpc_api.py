"""The public gRPC API, from Python stubs and from a Node.js client, gives the HTTP API's text."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest

from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack
from launcher.stack_probe import gateway_retries

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "def is_even(n):"


def _http_text(stack: Stack) -> str:
    r = httpx.post(stack.http_url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 24, "temperature": 0}, timeout=60)
    return r.json()["choices"][0]["text"]


def test_python_stubs_unary_and_stream(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_address) as ch:
        stub = pb_grpc.GroveStub(ch)
        req = pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=24, temperature=0.0))
        unary = stub.Generate(req, timeout=60)
        streamed = list(stub.GenerateStream(req, timeout=60))
        models = stub.ListModels(pb.ListModelsRequest(), timeout=10)
        toks = stub.Tokenize(pb.TokenizeRequest(prompt=PROMPT), timeout=10)
        forced = stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(
            max_tokens=5, temperature=0.0, logit_bias={28: 100.0}, min_tokens=5)), timeout=60)
        assert list(forced.token_ids) == [28] * 5
        only = stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(
            max_tokens=4, temperature=0.0, allowed_token_ids=[28, 29], bad_words=["-"])), timeout=60)
        assert list(only.token_ids) == [28] * 4  # "-" (29) is a bad word
        scored = stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=2)), timeout=60)
        assert len(scored.prompt_logprobs) == scored.usage.prompt_tokens - 1
        assert all(len(t.top_token_ids) == 2 and t.logprob <= 0 for t in scored.prompt_logprobs)
        assert all(t.rank == 1 for t in scored.prompt_logprobs if t.token_id == t.top_token_ids[0])
        assert all(t.rank > 2 for t in scored.prompt_logprobs if t.token_id not in t.top_token_ids)
        assert any(t.rank > 2 for t in scored.prompt_logprobs)
        urgent = stub.Generate(pb.GenerateRequest(prompt=PROMPT, priority=-5, sampling=pb.SamplingParams(
            max_tokens=5, temperature=0.0)), timeout=60)
        assert urgent.text == stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(
            max_tokens=5, temperature=0.0)), timeout=60).text
        retries = gateway_retries(stack)
        named = [stub.Generate.future(pb.GenerateRequest(prompt=PROMPT, request_id="mine", sampling=pb.SamplingParams(
            max_tokens=8, temperature=0.0)), timeout=60) for _ in range(6)]  # one id six times at once: no clash
        assert [f.result().request_id for f in named] == ["mine"] * 6
        assert gateway_retries(stack) == retries  # no worker refused a clashing id
        cut = stub.Generate(pb.GenerateRequest(prompt=PROMPT, truncate_prompt_tokens=2, sampling=pb.SamplingParams(
            max_tokens=1, temperature=0.0)), timeout=60)
        assert cut.usage.prompt_tokens == 2 < scored.usage.prompt_tokens
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(pb.GenerateRequest(prompt=PROMPT, truncate_prompt_tokens=0), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncate_prompt_tokens" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(top_p=2.0)), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # no room for so many beside the prompt
            stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(
                max_tokens=models.models[0].max_model_len)), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_tokens" in e.value.details()
        assert "context length" in e.value.details()
    text = _http_text(stack)
    assert unary.text == text == "".join(m.text for m in streamed)
    assert streamed[-1].finish_reason == unary.finish_reason and streamed[-1].usage.completion_tokens == len(unary.token_ids)
    assert models.models[0].id == "SmolLM2-135M-Instruct"
    assert unary.usage.prompt_tokens == len(toks.token_ids)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_nodejs_client_gets_the_same_text(stack: Stack) -> None:
    client_dir = ROOT / "tests" / "node_client"
    if not (client_dir / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=client_dir, check=True, timeout=300)
    out = subprocess.run(["node", "client.js", stack.grpc_address, str(ROOT / "protos"), PROMPT, "24"],
                         cwd=client_dir, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["text"] == _http_text(stack)
    assert result["streamed"] == result["text"]


@pytest.mark.parametrize("request_kw, field", [
    ({}, "input"),
    ({"prompt": PROMPT, "model": "gpt-4"}, "model"),
    ({"prompt_token_ids": pb.TokenIds(ids=[10**8])}, "prompt"),
    ({"prompt": PROMPT, "truncate_prompt_tokens": -5}, "truncate_prompt_tokens"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(max_tokens=0)}, "max_tokens"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(top_k=-5)}, "top_k"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(logit_bias={10**8: 1.0})}, "logit_bias"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(allowed_token_ids=[-3])}, "allowed_token_ids"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(allowed_token_ids=[10**8])}, "allowed_token_ids"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(bad_words=[" "])}, "bad_words"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(stop_token_ids=[-1])}, "stop_token_ids"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(prompt_logprobs=99)}, "prompt_logprobs"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(structured=pb.StructuredOutput(kind="yaml"))}, "structured"),
    ({"prompt": PROMPT, "sampling": pb.SamplingParams(structured=pb.StructuredOutput(kind="regex", spec="("))},
     "structured"),
])
def test_invalid_grpc_requests_are_invalid_argument_naming_the_field(stack: Stack, request_kw: dict,
                                                                     field: str) -> None:
    with grpc.insecure_channel(stack.grpc_address) as ch:
        stub = pb_grpc.GroveStub(ch)
        for call in (stub.Generate, lambda r, timeout: list(stub.GenerateStream(r, timeout=timeout))):
            with pytest.raises(grpc.RpcError) as e:
                call(pb.GenerateRequest(**request_kw), timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert field in e.value.details(), e.value.details()

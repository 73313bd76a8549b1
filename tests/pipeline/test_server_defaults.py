"""A gateway started with vLLM's serving flags in front of the stack's workers: the model's
default sampling parameters from ``--generation-config`` (a folder whose generation_config.json
sets greedy decoding, a repetition penalty and ``max_new_tokens``) and ``--chat-template``, over
HTTP and gRPC. Each answer must equal the stack's own gateway given the same values in the request.
Also ``--return-tokens-as-token-ids`` (logprobs' tokens by id unless a request says otherwise) and
``--root-path`` (the API under a reverse proxy's prefix)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest

from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc
from launcher.stack import Stack
from tests.pipeline.gateway_process import Gateway

PENALTY, CAP = 1.5, 12
PROMPT = "red green blue red green blue red green blue red"
TEMPLATE = "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n{% endfor %}### assistant:"


@pytest.fixture(scope="module")
def flagged(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("flagged-gateway")
    (home / "generation_config.json").write_text(json.dumps(
        {"do_sample": False, "temperature": 0.0, "repetition_penalty": PENALTY, "max_new_tokens": CAP}))
    (home / "chat.jinja").write_text(TEMPLATE)
    gw = Gateway(stack, home, "--generation-config", str(home), "--chat-template", str(home / "chat.jinja"),
                 "--enable-force-include-usage", "--return-tokens-as-token-ids", "--root-path", "/grove")
    yield gw
    gw.stop()


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + path, json={**body, "return_token_ids": True}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(url: str, body: dict[str, Any]) -> list[int]:
    return _post(url, "/v1/completions", body)["choices"][0]["token_ids"]


def test_a_completion_takes_the_models_defaults(stack: Stack, flagged: Gateway) -> None:
    own = _ids(stack.http_url, {"prompt": PROMPT, "temperature": 0, "repetition_penalty": PENALTY, "max_tokens": CAP})
    assert _ids(flagged.http_url, {"prompt": PROMPT}) == own
    assert _ids(flagged.http_url, {"prompt": PROMPT, "max_tokens": 200}) == own  # max_new_tokens caps it
    # the defaults do change the answer here, and a request's own fields win over them
    plain = _ids(stack.http_url, {"prompt": PROMPT, "temperature": 0, "max_tokens": CAP})
    assert plain != own
    assert _ids(flagged.http_url, {"prompt": PROMPT, "repetition_penalty": 1.0}) == plain
    assert _ids(flagged.http_url, {"prompt": PROMPT, "max_tokens": 3}) == own[:3]


def test_grpc_takes_the_same_defaults(stack: Stack, flagged: Gateway) -> None:
    own = _ids(stack.http_url, {"prompt": PROMPT, "temperature": 0, "repetition_penalty": PENALTY, "max_tokens": CAP})
    with grpc.insecure_channel(flagged.grpc_address) as ch:
        stub = pb_grpc.GroveStub(ch)
        assert list(stub.Generate(pb.GenerateRequest(prompt=PROMPT), timeout=120).token_ids) == own
        mine = stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(repetition_penalty=1.0)),
                             timeout=120)
    assert list(mine.token_ids) == _ids(stack.http_url, {"prompt": PROMPT, "temperature": 0, "max_tokens": CAP})


def test_a_chat_is_rendered_by_the_servers_template(stack: Stack, flagged: Gateway) -> None:
    messages = [{"role": "system", "content": "You name colors."}, {"role": "user", "content": "Name three colors."}]
    rendered = "".join(f"### {m['role']}:\n{m['content']}\n" for m in messages) + "### assistant:"
    prompt = httpx.post(stack.http_url + "/tokenize", json={"prompt": rendered, "add_special_tokens": False},
                        timeout=30).json()["tokens"]
    chat = _post(flagged.http_url, "/v1/chat/completions", {"messages": messages})
    assert chat["usage"]["prompt_tokens"] == len(prompt)
    own = _ids(stack.http_url, {"prompt": prompt, "temperature": 0, "repetition_penalty": PENALTY, "max_tokens": CAP})
    assert chat["choices"][0]["token_ids"] == own
    shown = httpx.post(flagged.http_url + "/tokenize", json={"messages": messages}, timeout=30).json()["tokens"]
    assert shown == prompt


def test_a_request_may_not_bring_its_own_template_unless_trusted(flagged: Gateway) -> None:
    r = httpx.post(flagged.http_url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "Hi"}], "chat_template": "{{ messages[0].content }}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template"


def test_cors_preflight_from_a_browser(flagged: Gateway) -> None:
    r = httpx.options(flagged.http_url + "/v1/chat/completions", timeout=30, headers={
        "origin": "http://localhost:3000", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


def test_every_stream_ends_with_its_usage_under_force_include_usage(stack: Stack, flagged: Gateway) -> None:
    """vLLM's ``--enable-force-include-usage``: a stream that does not ask (or asks not to) still
    ends with a usage chunk; ``continuous_usage_stats`` still puts it on every chunk. The stack's
    gateway, without the flag, sends none unless asked."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5}
    for options in (None, {"include_usage": False}):
        chunks = _stream(flagged.http_url, {**body, **({"stream_options": options} if options else {})})
        *text, last = chunks
        assert last["choices"] == [] and 0 < last["usage"]["completion_tokens"] <= 5, chunks
        assert all(c.get("usage") is None for c in text)
    continuous = _stream(flagged.http_url, {**body, "stream_options": {"continuous_usage_stats": True}})
    assert all(c.get("usage") is not None for c in continuous)
    assert all(c.get("usage") is None for c in _stream(stack.http_url, body))


def test_a_bad_flag_stops_the_gateway_at_start(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="temperature"):
        Gateway(stack, tmp_path, "--override-generation-config", '{"temperature": -2}')


def test_logprobs_name_their_tokens_by_id_unless_a_request_says_otherwise(stack: Stack, flagged: Gateway) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "logprobs": 2}
    got = _post(flagged.http_url, "/v1/completions", body)["choices"][0]
    assert got["logprobs"]["tokens"] == [f"token_id:{t}" for t in got["token_ids"]]
    assert all(k.startswith("token_id:") for top in got["logprobs"]["top_logprobs"] for k in top)
    for url, extra in ((flagged.http_url, {"return_tokens_as_token_ids": False}), (stack.http_url, {})):
        text = _post(url, "/v1/completions", {**body, **extra})["choices"][0]["logprobs"]["tokens"]
        assert len(text) == 3 and not any(t.startswith("token_id:") for t in text)
    chat = _post(flagged.http_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                             "max_tokens": 2, "logprobs": True})
    assert all(t["token"].startswith("token_id:") for t in chat["choices"][0]["logprobs"]["content"])


def test_the_api_answers_under_its_root_path(stack: Stack, flagged: Gateway) -> None:
    """As a reverse proxy forwards it, with the prefix or without it; the stack's gateway has none."""
    for path in ("/grove/v1/models", "/v1/models"):
        r = httpx.get(flagged.http_url + path, timeout=10)
        assert r.status_code == 200 and r.json()["data"], (path, r.text)
    assert httpx.get(stack.http_url + "/grove/v1/models", timeout=10).status_code == 404

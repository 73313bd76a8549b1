"""vLLM's ``add_special_tokens`` (a completion's prompt text: true by default; a chat's: false, the
template writes its own) and /tokenize's ``return_token_strs``.

The bundled tokenizer adds no BOS, so these run on a copy of its files whose tokenizer.json adds
one (a post-processor template, as Llama 3's has): the real gateway app over the real core, with
no workers behind it (what reaches them is told by the context check before routing).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core import GatewayConfig, GatewayCore
from gateway.http_api import build_app
from gateway.metrics import GatewayMetrics
from gateway.router import Router

CONTEXT = 12


@pytest.fixture(scope="module")
def bos_core(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> GatewayCore:
    d = tmp_path_factory.mktemp("bos-model")
    for f in model_dir.iterdir():
        if f.name != "tokenizer.json":
            (d / f.name).symlink_to(f)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    bos = json.loads((model_dir / "tokenizer_config.json").read_text())["bos_token"]
    bos_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == bos)
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    router = Router([], [], block_size=16)
    return GatewayCore(GatewayConfig(str(d), "m", CONTEXT), router, GatewayMetrics("m", "gateway-test", router))


def _post(core: GatewayCore, path: str, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(core)), base_url="http://gw") as c:
            return await c.post(path, json=body)
    return asyncio.run(go())


def test_tokenize_adds_the_bos_to_a_prompt_unless_asked_not_to(bos_core: GatewayCore) -> None:
    tok = bos_core.tokenizer
    bare = tok("Hello world", add_special_tokens=False)["input_ids"]
    assert _post(bos_core, "/tokenize", {"prompt": "Hello world"}).json()["tokens"] == [tok.bos_token_id, *bare]
    r = _post(bos_core, "/tokenize", {"prompt": "Hello world", "add_special_tokens": False, "return_token_strs": True})
    assert r.json()["tokens"] == bare
    assert r.json()["token_strs"] == tok.convert_ids_to_tokens(bare) == ["Hello", "Ġworld"]
    assert "token_strs" not in _post(bos_core, "/tokenize", {"prompt": "Hello world"}).json()


def test_a_chat_gets_the_bos_only_when_asked(bos_core: GatewayCore) -> None:
    messages = [{"role": "user", "content": "hi"}]
    tok = bos_core.tokenizer
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    templated = _post(bos_core, "/tokenize", {"messages": messages}).json()["tokens"]
    assert templated == tok(rendered, add_special_tokens=False)["input_ids"]  # the template's own BOS only
    asked = _post(bos_core, "/tokenize", {"messages": messages, "add_special_tokens": True}).json()["tokens"]
    assert asked == [tok.bos_token_id, *templated]


def test_a_completions_prompt_is_read_with_or_without_the_bos(bos_core: GatewayCore) -> None:
    """A prompt of CONTEXT - 1 tokens fits the context alone (the request reaches routing: a 503,
    no worker here), and is one too many with the BOS (a 400 that counts it)."""
    text = " ".join(["word"] * 40)
    ids = bos_core.tokenizer(text, add_special_tokens=False)["input_ids"][:CONTEXT - 1]
    prompt = bos_core.tokenizer.decode(ids)
    assert bos_core.tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids
    with_bos = _post(bos_core, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert with_bos.status_code == 400 and f"has {CONTEXT} tokens" in with_bos.json()["error"]["message"]
    bare = _post(bos_core, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "add_special_tokens": False})
    assert bare.status_code == 503, bare.text


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hi", "add_special_tokens": "no"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "add_special_tokens": 1}),
    ("/tokenize", {"prompt": "hi", "add_special_tokens": "false"}),
    ("/tokenize", {"prompt": "hi", "return_token_strs": "yes"}),
])
def test_a_flag_that_is_not_a_boolean_is_400(bos_core: GatewayCore, path: str, body: dict[str, Any]) -> None:
    r = _post(bos_core, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in body and "must be a boolean" in r.json()["error"]["message"]

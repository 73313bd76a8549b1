"""--api-key: /v1/ needs ``Authorization: Bearer <key>``; /health and /metrics stay open.

The real gateway app over the real core (tokenizer of the bundled model, router, metrics), with no
workers behind it: past the key check a completion reaches the router and gets its 503.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.core import GatewayConfig, GatewayCore
from gateway.http_api import build_app
from gateway.metrics import GatewayMetrics
from gateway.router import Router


@pytest.fixture(scope="module")
def core(model_dir: Path) -> GatewayCore:
    router = Router([], [], block_size=16)
    return GatewayCore(GatewayConfig(str(model_dir), "m", 2048), router, GatewayMetrics("m", "gateway-test", router))


def call(app: FastAPI, method: str, path: str, key: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.request(method, path, headers=headers, json=body)
    return asyncio.run(go())


@pytest.mark.parametrize("key", [None, "wrong", ""])
def test_v1_without_the_key_is_401_with_a_message(core: GatewayCore, key: str | None) -> None:
    r = call(build_app(core, api_key="s3cret"), "GET", "/v1/models", key)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and "API key" in err["message"]


def test_v1_with_the_key_and_open_paths_without_it(core: GatewayCore) -> None:
    app = build_app(core, api_key="s3cret")
    r = call(app, "GET", "/v1/models", "s3cret")
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "m"
    # past the key check: tokenized, then the router has no prefill worker
    r = call(app, "POST", "/v1/completions", "s3cret", {"model": "m", "prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 503 and "prefill" in r.json()["error"]["message"]
    assert call(app, "GET", "/health", None).status_code == 503  # open, and honest: no workers
    assert call(app, "GET", "/metrics", None).status_code == 200


def test_no_key_configured_means_open(core: GatewayCore) -> None:
    assert call(build_app(core), "GET", "/v1/models", None).status_code == 200


def test_sagemakers_invocations_needs_the_key_too(core: GatewayCore) -> None:
    app = build_app(core, api_key="s3cret")
    assert call(app, "POST", "/invocations", None, {"prompt": "Hello"}).status_code == 401
    r = call(app, "POST", "/invocations", "s3cret", {"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 503  # past the key: a completion, and no prefill worker
    r = call(app, "POST", "/invocations", "s3cret", {"input": "Hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


def test_under_a_root_path_the_key_guards_both_forms_of_a_path(core: GatewayCore) -> None:
    """--root-path: a proxy may forward /grove/v1/models or /v1/models; both need the key."""
    app = build_app(core, api_key="s3cret", root_path="/grove")
    for path in ("/grove/v1/models", "/v1/models"):
        assert call(app, "GET", path, None).status_code == 401, path
        assert call(app, "GET", path, "s3cret").status_code == 200, path
    assert call(app, "POST", "/grove/invocations", None, {"prompt": "Hello"}).status_code == 401

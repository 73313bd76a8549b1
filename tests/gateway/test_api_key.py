"""--api-key: /v1/ needs ``Authorization: Bearer <key>``; /health and /metrics stay open."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest

from gateway.http_api import build_app


def core() -> SimpleNamespace:
    # the endpoints reached here read only the served name, the router's health and the metrics
    healthy = SimpleNamespace(healthy=True)
    return SimpleNamespace(config=SimpleNamespace(served_model_name="m", max_model_len=8),
                           router=SimpleNamespace(prefill=[healthy], decode=[healthy]),
                           metrics=SimpleNamespace(exposition=lambda: b""))


def get(app: object, path: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.get(path, headers=headers)
    return asyncio.run(go())


@pytest.mark.parametrize("key", [None, "wrong", ""])
def test_v1_without_the_key_is_401_with_a_message(key: str | None) -> None:
    r = get(build_app(core(), api_key="s3cret"), "/v1/models", key)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and "API key" in err["message"]


def test_v1_with_the_key_and_open_paths_without_it() -> None:
    app = build_app(core(), api_key="s3cret")
    r = get(app, "/v1/models", "s3cret")
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "m"
    assert (get(app, "/health", None)).status_code == 200
    assert (get(app, "/metrics", None)).status_code == 200


def test_no_key_configured_means_open() -> None:
    assert (get(build_app(core()), "/v1/models", None)).status_code == 200

"""/v1/models and OpenAI's "retrieve model", through the openai client over the real gateway app
(the real core and the bundled model's tokenizer; no workers are needed to describe the model)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.core import GatewayConfig, GatewayCore
from gateway.http_api import build_app
from gateway.metrics import GatewayMetrics
from gateway.router import Router

NAME = "org/grove-model"  # a name with a slash, as hub names have


@pytest.fixture(scope="module")
def core(model_dir: Path) -> GatewayCore:
    router = Router([], [], block_size=16)
    return GatewayCore(GatewayConfig(str(model_dir), NAME, 2048), router, GatewayMetrics(NAME, "gateway-test", router))


def _with_client(core: GatewayCore, fn: Any) -> Any:
    async def go() -> Any:
        transport = httpx.ASGITransport(app=build_app(core))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw/v1") as http:
            client = openai.AsyncOpenAI(api_key="none", base_url="http://gw/v1", http_client=http, max_retries=0)
            return await fn(client)
    return asyncio.run(go())


def test_the_list_and_the_retrieved_card_name_the_served_model(core: GatewayCore, model_dir: Path) -> None:
    async def both(client: openai.AsyncOpenAI) -> tuple[Any, Any]:
        return await client.models.list(), await client.models.retrieve(NAME)

    listed, card = _with_client(core, both)
    assert [m.id for m in listed.data] == [NAME]
    assert card.id == NAME and card.object == "model" and card.owned_by == "grove"
    assert card.created > 0 and card.created == listed.data[0].created
    assert card.model_extra == {"root": str(model_dir), "parent": None, "max_model_len": 2048}


def test_retrieving_a_model_not_served_is_404_with_a_message(core: GatewayCore) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        _with_client(core, lambda client: client.models.retrieve("other-model"))
    err = e.value.body
    assert err["type"] == "not_found_error" and err["param"] == "model"
    assert "'other-model' is not served here" in err["message"] and NAME in err["message"]


def test_every_served_name_is_listed_and_answers(model_dir: Path) -> None:
    """vLLM's --served-model-name a b: requests may name either; responses and the first card use a."""
    router = Router([], [], block_size=16)
    core = GatewayCore(GatewayConfig(str(model_dir), "main", 2048, aliases=("alias",)), router,
                       GatewayMetrics("main", "gateway-test", router))

    async def go(client: openai.AsyncOpenAI) -> Any:
        listed = await client.models.list()
        card = await client.models.retrieve("alias")
        try:  # past the model check, to the router: no prefill worker here
            await client.completions.create(model="alias", prompt="Hi", max_tokens=2)
        except openai.APIStatusError as e:
            status = e.status_code
        try:
            await client.completions.create(model="other", prompt="Hi", max_tokens=2)
        except openai.NotFoundError as e:  # vLLM's answer to a model it does not serve
            other = e.body["param"]
        return [m.id for m in listed.data], card.id, status, other

    assert _with_client(core, go) == (["main", "alias"], "alias", 503, "model")

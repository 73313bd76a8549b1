"""CORS (vLLM's ``--allowed-origins`` and friends: any origin by default), the server's own chat
template (``--chat-template``) and a request's (``chat_template``, only with
``--trust-request-chat-template``, as vLLM).

The real gateway app over the real core (the bundled model's tokenizer), with no workers behind
it: /tokenize shows the prompt a chat request would have."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.tokenizer import read_chat_template
from gateway.core import GatewayConfig, GatewayCore
from gateway.http_api import Cors, build_app
from gateway.metrics import GatewayMetrics
from gateway.router import Router

UI = "https://ui.example"
PREFLIGHT = {"origin": UI, "access-control-request-method": "POST",
             "access-control-request-headers": "authorization,content-type"}
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def _core(model_dir: Path, **config: Any) -> GatewayCore:
    router = Router([], [], block_size=16)
    return GatewayCore(GatewayConfig(str(model_dir), "m", 2048, **config), router,
                       GatewayMetrics("m", "gateway-test", router))


def _call(app: Any, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.request(method, path, headers=headers, json=body)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def core(model_dir: Path) -> GatewayCore:
    return _core(model_dir)


def test_any_origin_by_default_even_with_an_api_key(core: GatewayCore) -> None:
    app = build_app(core, api_key="s3cret")
    r = _call(app, "OPTIONS", "/v1/chat/completions", PREFLIGHT)  # a browser's preflight carries no key
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = _call(app, "GET", "/v1/models", {"origin": UI})  # no key: a 401 the page's script can read
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"
    r = _call(app, "GET", "/v1/models", {"origin": UI, "authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_only_the_allowed_origins(core: GatewayCore) -> None:
    app = build_app(core, cors=Cors(origins=(UI,), credentials=True))
    r = _call(app, "OPTIONS", "/v1/completions", PREFLIGHT)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == UI
    assert r.headers["access-control-allow-credentials"] == "true"
    other = _call(app, "OPTIONS", "/v1/completions", {**PREFLIGHT, "origin": "https://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    r = _call(app, "GET", "/v1/models", {"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser refuses it
    r = _call(build_app(core, cors=None), "GET", "/v1/models", {"origin": UI})
    assert "access-control-allow-origin" not in r.headers


def _tokenize(core: GatewayCore, **body: Any) -> httpx.Response:
    return _call(build_app(core), "POST", "/tokenize", {}, {"messages": MESSAGES, **body})


def test_the_servers_chat_template_renders_every_chat(model_dir: Path, tmp_path: Path) -> None:
    plain = _core(model_dir)
    file = tmp_path / "t.jinja"
    file.write_text(TEMPLATE)
    custom = _core(model_dir, chat_template=read_chat_template(str(file)))
    text = "<system>Be brief.\n<user>Hi there\n<bot>"
    expected = plain.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _tokenize(custom).json()["tokens"] == expected
    assert _tokenize(plain).json()["tokens"] != expected  # the model's own template is another
    # the flag's inline form, with its escapes read as vLLM reads them
    inline = _core(model_dir, chat_template=read_chat_template(TEMPLATE.replace("\n", "\\n")))
    assert _tokenize(inline).json()["tokens"] == expected


def test_a_requests_own_template_needs_the_servers_trust(model_dir: Path, core: GatewayCore) -> None:
    r = _tokenize(core, chat_template=TEMPLATE)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "chat_template" and "--trust-request-chat-template" in err["message"]
    r = _call(build_app(core), "POST", "/v1/chat/completions", {}, {"messages": MESSAGES, "chat_template": TEMPLATE})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template"
    trusting = _core(model_dir, trust_request_chat_template=True)
    text = "<system>Be brief.\n<user>Hi there\n<bot>"
    assert _tokenize(trusting, chat_template=TEMPLATE).json()["tokens"] == \
        trusting.tokenizer(text, add_special_tokens=False)["input_ids"]
    for bad in ("{% for m in %}", "{{ 1 / 0 }}", "{{ raise_exception('no system messages') }}"):
        r = _tokenize(trusting, chat_template=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template", bad
        assert "chat template failed" in r.json()["error"]["message"]
    assert _tokenize(trusting, chat_template=5).status_code == 400


@pytest.mark.parametrize("value, says", [("/no/such/template.jinja", "looks like a file path"),
                                         ("{% if %}", "does not parse")])
def test_a_bad_server_template_is_refused_at_start(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        read_chat_template(value)


def test_openais_developer_role_is_the_system_role(core: GatewayCore) -> None:
    developer = [{"role": "developer", "content": "Be brief."}, MESSAGES[1]]
    r = _tokenize(core, messages=developer)
    assert r.status_code == 200 and r.json()["tokens"] == _tokenize(core).json()["tokens"]


def test_documents_reach_a_template_that_renders_them(model_dir: Path) -> None:
    """vLLM's ``documents`` (retrieval-augmented chat): handed to the template as ``documents``."""
    rag = ("{% for d in documents %}[{{ d.title }}] {{ d.text }}\n{% endfor %}"
           "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    core = _core(model_dir, chat_template=rag)
    docs = [{"title": "Tides", "text": "The moon pulls the sea."}, {"title": "Wind", "text": "Air moves."}]
    text = "[Tides] The moon pulls the sea.\n[Wind] Air moves.\nsystem: Be brief.\nuser: Hi there\n"
    assert _tokenize(core, documents=docs).json()["tokens"] == core.tokenizer(text, add_special_tokens=False)["input_ids"]
    for bad in ("text", [1], [{"title": 2}]):
        r = _tokenize(core, documents=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "documents"


def test_the_servers_default_template_kwargs_yield_to_the_requests(model_dir: Path) -> None:
    """vLLM's --default-chat-template-kwargs: every chat gets them; a request's own
    chat_template_kwargs (and its reasoning_effort) win where they set the same variable."""
    template = "{{ mode }}/{{ reasoning_effort }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    core = _core(model_dir, chat_template=template,
                 default_template_kwargs={"mode": "think", "reasoning_effort": "low"})

    def rendered(**body: Any) -> str:
        r = _tokenize(core, **body)
        assert r.status_code == 200, r.text
        return core.tokenizer.decode(r.json()["tokens"])

    assert rendered().startswith("think/low|")
    assert rendered(chat_template_kwargs={"mode": "fast"}).startswith("fast/low|")
    assert rendered(reasoning_effort="high").startswith("think/high|")
    assert _core(model_dir, chat_template=template).token_ids(
        messages=[{"role": "user", "content": "x"}]) != core.token_ids(messages=[{"role": "user", "content": "x"}])

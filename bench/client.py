"""Backends: how a job reaches a server. A backend sends one job and returns its measured record.

HTTP (OpenAI-compatible, streaming SSE) is here; the gRPC backend for ``grove.v1`` (grpc_client.py)
implements the same ``Backend`` protocol; ``make_backend`` chooses by URL scheme.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Literal, Mapping, Protocol

import httpx

from bench.openai_stream import DONE, PromptFormat, StreamError, apply_chunk, chat_body, completion_body, parse_sse_line
from bench.records import Job, RequestRecord

logger = logging.getLogger(__name__)

Api = Literal["auto", "completions"]


class Backend(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """What the result file records about this backend (kind, address, options)."""
        ...

    async def start(self) -> None:
        """Connect and resolve anything needed before the first request (e.g. the model name)."""
        ...

    async def send(self, job: Job) -> RequestRecord:
        """Run one request to completion. Failures are recorded in ``record.error``, never raised."""
        ...

    async def aclose(self) -> None:
        ...


def api_root(url: str) -> str:
    """``http://host:port``, ``.../`` and ``.../v1`` all name the same API root ``.../v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIHTTPBackend:
    """``/v1/completions`` and ``/v1/chat/completions`` with ``stream: true`` over one connection pool.

    ``api="auto"`` sends chat prompts as messages (the server applies its template) and completion
    prompts to /v1/completions; ``api="completions"`` sends every prompt as token ids (exact tokens).
    """

    def __init__(self, url: str, *, name: str = "grove", model: str | None = None, api: Api = "auto",
                 prompt_format: PromptFormat = "ids", timeout_s: float = 600.0, api_key: str | None = None,
                 max_connections: int = 1024, extra_body: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.root = api_root(url)
        self.model = model
        self.api = api
        self.prompt_format = prompt_format
        self.extra_body = dict(extra_body or {})  # merged into every request body
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai-http", "url": self.root, "model": self.model, "api": self.api,
                "prompt_format": self.prompt_format, "extra_body": self.extra_body}

    async def start(self) -> None:
        if self.model is None:
            self.model = await self._first_model()

    async def _first_model(self) -> str:
        try:
            resp = await self._client.get(f"{self.root}/models")
            resp.raise_for_status()
            models = resp.json().get("data") or []
            if models and isinstance(models[0], dict) and models[0].get("id"):
                return str(models[0]["id"])
        except (httpx.HTTPError, ValueError) as e:
            logger.warning("%s: GET /models failed (%s); sending model 'default'", self.name, e)
        return "default"

    def _request(self, job: Job) -> tuple[str, dict[str, Any]]:
        assert self.model is not None, "call start() first"
        if self.api == "auto" and job.prompt.kind == "chat":
            return f"{self.root}/chat/completions", {**chat_body(job, self.model), **self.extra_body}
        return f"{self.root}/completions", {**completion_body(job, self.model, self.prompt_format), **self.extra_body}

    async def send(self, job: Job) -> RequestRecord:
        url, body = self._request(job)
        record = RequestRecord(job_index=job.index, prompt_id=job.prompt.id, prompt_tokens=len(job.prompt_ids),
                               send_time=time.perf_counter())
        done = False
        try:
            async with self._client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    record.error = f"HTTP {resp.status_code}: {text[:300]}"
                else:
                    async for line in resp.aiter_lines():
                        event = parse_sse_line(line)
                        if event is DONE:
                            done = True
                            break
                        if event is not None:
                            apply_chunk(record, event, time.perf_counter())  # type: ignore[arg-type]
                            if record.error:
                                break
        except (httpx.HTTPError, StreamError) as e:
            record.error = f"{type(e).__name__}: {e}"
        record.end_time = time.perf_counter()
        if record.error is None and not done and record.finish_reason is None:
            record.error = "stream ended without a finish_reason or [DONE]"
        return record

    async def aclose(self) -> None:
        await self._client.aclose()


def make_backend(url: str, **options: Any) -> Backend:
    """The backend for ``url``: OpenAI HTTP for http(s)://, grove.v1 for grpc://host:port."""
    if url.startswith(("http://", "https://")):
        return OpenAIHTTPBackend(url, **options)
    if url.startswith("grpc://"):
        if options.get("extra_body"):
            raise ValueError("extra request body fields need an HTTP server, not grpc://")
        from bench.grpc_client import GroveGRPCBackend  # imports the generated stubs

        return GroveGRPCBackend(url, **options)
    raise ValueError(f"unsupported URL {url!r}: expected http://, https:// or grpc://")

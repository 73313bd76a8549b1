"""A real OpenAI-compatible streaming HTTP server for testing the bench before Grove's gateway exists.

``/v1/completions`` (prompt as text or token ids) and ``/v1/chat/completions`` stream SSE chunks
with a final usage block, like Grove's gateway will. Two token sources:

- ``HFGreedySource``: transformers ``generate`` greedy decoding on the real model, one request at
  a time, tokens streamed as ``generate`` produces them. ``cached_tokens`` reports the longest
  prefix shared with any earlier prompt (what an unbounded prefix cache would hit); no lookahead,
  so accepted/rejected prediction tokens are 0.
- ``EchoSource``: no model; streams the prompt's own tokens back at a fixed pace and reports no
  usage details. Fast and deterministic, for testing load shapes (concurrency, arrivals, order).
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Protocol

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers.generation.streamers import BaseStreamer

from engine.tokenizer import apply_chat_template

_END = object()


class TokenSource(Protocol):
    eos_ids: set[int]

    def stream(self, prompt_ids: list[int], max_tokens: int) -> AsyncIterator[list[int]]: ...

    def usage_details(self, prompt_ids: list[int]) -> dict[str, Any]: ...


class _QueueStreamer(BaseStreamer):
    """Hands ``generate``'s new tokens (not the prompt, its first put) to an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class HFGreedySource:
    def __init__(self, model: Any) -> None:
        self.model = model
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # One generate at a time, always on the same thread (torch's per-thread set-up happens once).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-greedy")
        self._seen: list[list[int]] = []

    def _generate(self, prompt_ids: list[int], max_tokens: int, streamer: _QueueStreamer) -> None:
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        pad = self.model.config.pad_token_id
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
                                pad_token_id=self.model.config.eos_token_id if pad is None else pad, streamer=streamer)

    async def stream(self, prompt_ids: list[int], max_tokens: int) -> AsyncIterator[list[int]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        streamer = _QueueStreamer(loop, queue)

        def work() -> None:
            try:
                self._generate(prompt_ids, max_tokens, streamer)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        task = loop.run_in_executor(self._executor, work)
        while (item := await queue.get()) is not _END:
            yield item
        await task

    def usage_details(self, prompt_ids: list[int]) -> dict[str, Any]:
        best = 0
        for seen in self._seen:
            n = 0
            for a, b in zip(seen, prompt_ids):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        self._seen.append(list(prompt_ids))
        return {"prompt_tokens_details": {"cached_tokens": best},
                "completion_tokens_details": {"accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


class EchoSource:
    """Streams the prompt back, one token every ``delay_s``; tracks how many requests overlap."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.eos_ids: set[int] = set()
        self.in_flight = 0
        self.max_in_flight = 0

    async def stream(self, prompt_ids: list[int], max_tokens: int) -> AsyncIterator[list[int]]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for token in prompt_ids[:max_tokens]:
                await asyncio.sleep(self.delay_s)
                yield [token]
        finally:
            self.in_flight -= 1

    def usage_details(self, prompt_ids: list[int]) -> dict[str, Any]:
        return {}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def create_app(source: TokenSource, tokenizer: Any, model_name: str = "smollm2-135m-instruct",
               emit_token_ids: bool = False) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    async def handle(request: Request, chat: bool) -> Any:
        body = await request.json()
        if body.get("temperature", 1.0) != 0 or body.get("stream") is not True:
            return JSONResponse({"error": {"message": "this test server only streams greedy (temperature 0)"}}, 400)
        if chat:
            prompt_ids = apply_chat_template(tokenizer, body["messages"])
        elif isinstance(body.get("prompt"), list):
            prompt_ids = [int(t) for t in body["prompt"]]
        else:
            prompt_ids = list(tokenizer.encode(body["prompt"]))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        rid, created = f"cmpl-{uuid.uuid4().hex[:12]}", int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text: str, ids: list[int] | None, finish: str | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            if emit_token_ids and ids is not None:
                choice["token_ids"] = ids
            return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                    "model": model_name, "choices": [choice]}

        async def events() -> AsyncIterator[bytes]:
            tokens: list[int] = []
            sent = ""
            async for new in source.stream(prompt_ids, max_tokens):
                tokens += new
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # an incomplete UTF-8 character: wait for the rest
                yield _sse(chunk(text[len(sent):], new, None))
                sent = text
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            finish = "stop" if tokens and tokens[-1] in source.eos_ids else "length"
            yield _sse(chunk(text[len(sent):], None, finish))
            if include_usage:
                usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(tokens),
                         "total_tokens": len(prompt_ids) + len(tokens), **source.usage_details(prompt_ids)}
                yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                            "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, chat=True)

    return app


class ServerThread:
    """Runs an app with uvicorn on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: FastAPI) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

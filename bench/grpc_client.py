"""The grove.v1 gRPC backend: GenerateStream with exact prompt token ids (or chat messages)."""
from __future__ import annotations

import time
from typing import Any

import grpc

from bench.records import Job, RequestRecord, Usage
from grove.v1 import api_pb2 as pb
from grove.v1 import api_pb2_grpc as pb_grpc


class GroveGRPCBackend:
    """``grpc://host:port``: one channel, one GenerateStream call per job."""

    def __init__(self, url: str, *, name: str = "grove", model: str | None = None, timeout_s: float = 600.0,
                 **_ignored: Any) -> None:
        self.name = name
        self.address = url.removeprefix("grpc://").rstrip("/")
        self.model = model or ""
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GroveStub | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "grove-grpc", "url": f"grpc://{self.address}", "model": self.model}

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = pb_grpc.GroveStub(self._channel)
        if not self.model:
            models = await self._stub.ListModels(pb.ListModelsRequest(), timeout=30)
            self.model = models.models[0].id if models.models else ""

    def _request(self, job: Job) -> pb.GenerateRequest:
        req = pb.GenerateRequest(model=self.model, sampling=pb.SamplingParams(max_tokens=job.max_tokens, temperature=0.0))
        if job.prompt.kind == "chat":
            req.chat.messages.extend(pb.ChatMessage(role=r, content=c) for r, c in job.prompt.messages or ())
        else:
            req.prompt_token_ids.ids.extend(job.prompt_ids)
        return req

    async def send(self, job: Job) -> RequestRecord:
        assert self._stub is not None, "call start() first"
        record = RequestRecord(job_index=job.index, prompt_id=job.prompt.id, prompt_tokens=len(job.prompt_ids),
                               send_time=time.perf_counter(), output_ids=[])
        try:
            async for msg in self._stub.GenerateStream(self._request(job), timeout=self.timeout_s):
                now = time.perf_counter()
                if msg.token_ids:
                    record.chunk_times.append(now)
                    record.output_ids.extend(msg.token_ids)  # type: ignore[union-attr]
                record.text += msg.text
                if msg.finish_reason:
                    record.finish_reason = msg.finish_reason
                    u = msg.usage
                    record.usage = Usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.accepted_tokens,
                                         u.draft_tokens - u.accepted_tokens)
        except grpc.aio.AioRpcError as e:
            record.error = f"gRPC {e.code().name}: {e.details()}"
        record.end_time = time.perf_counter()
        if record.error is None and record.finish_reason is None:
            record.error = "stream ended without a finish_reason"
        return record

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()

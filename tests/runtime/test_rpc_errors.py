"""A failed gRPC call is described in one line: its status code and details."""
from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.rpc_errors import describe


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_a_call_to_nothing_is_described_by_its_code_in_one_line() -> None:
    async def call() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_closed_port()}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return e.value

    err = asyncio.run(call())
    text = describe(err)
    assert text.startswith("UNAVAILABLE: ") and "\n" not in text, text


def test_anything_else_is_described_by_its_type_and_message() -> None:
    assert describe(TimeoutError("took too long")) == "TimeoutError: took too long"

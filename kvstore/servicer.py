"""Thin gRPC servicer: decode (protocol.kvstore), call KVStore, encode; typed errors -> status codes."""
from __future__ import annotations

import functools
import logging
import time
from contextlib import ExitStack
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from grove.internal.v1 import kvstore_pb2 as pb
from grove.internal.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore.byte_stream import BlockSink, iter_chunks
from kvstore.errors import InvalidRequestError, LeaseNotFoundError, StoreFullError
from kvstore.store import KVStore
from kvstore.types import ConnectInfo, TransferReport
from protocol import kvstore as convert

logger = logging.getLogger(__name__)

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (LeaseNotFoundError, grpc.StatusCode.NOT_FOUND),
    (StoreFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)
_ERRORS = tuple(cls for cls, _ in _CODES)
Req, Resp = TypeVar("Req"), TypeVar("Resp")


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    code = next(code for cls, code in _CODES if isinstance(error, cls))
    await context.abort(code, str(error))


def _unary(fn: Callable[..., Awaitable[Resp]]) -> Callable[..., Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: "KVStoreServicer", request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except _ERRORS as e:
            await _abort(context, e)
            raise AssertionError("unreachable: abort raises")
    return wrapper


class KVStoreServicer(pb_grpc.KVStoreServicer):
    def __init__(self, store: KVStore, connect_info: ConnectInfo) -> None:
        self.store = store
        self.info = connect_info

    def _namespace(self, msg: pb.Namespace) -> str:
        return self.store.namespace(*convert.namespace_from_pb(msg))

    @_unary
    async def Connect(self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext) -> pb.ConnectResponse:
        self._namespace(request.ns)
        return convert.connect_to_pb(self.info)

    @_unary
    async def Match(self, request: pb.MatchRequest, context: grpc.aio.ServicerContext) -> pb.MatchResponse:
        result = self.store.match(self._namespace(request.ns), request.tokens, lease=not request.peek)
        return convert.match_to_pb(result, self.store.config.lease_ttl_s, self.store.store_id)

    @_unary
    async def Allocate(self, request: pb.AllocateRequest, context: grpc.aio.ServicerContext) -> pb.AllocateResponse:
        result = self.store.allocate(self._namespace(request.ns), request.tokens)
        return convert.allocate_to_pb(result, self.store.config.lease_ttl_s, self.store.store_id)

    @_unary
    async def Commit(self, request: pb.CommitRequest, context: grpc.aio.ServicerContext) -> pb.CommitResponse:
        report = convert.report_from_pb(request)
        result = self.store.commit(request.lease_id)
        if report is not None:
            self.store.record_transfer(report, "write")
        return convert.commit_to_pb(result)

    @_unary
    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        report = convert.report_from_pb(request)
        self.store.release(request.lease_id)
        if report is not None:
            self.store.record_transfer(report, "read")
        return pb.ReleaseResponse()

    @_unary
    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        return convert.stats_to_pb(self.store.stats())

    @_unary
    async def Clear(self, request: pb.ClearRequest, context: grpc.aio.ServicerContext) -> pb.ClearResponse:
        return pb.ClearResponse(dropped_blocks=self.store.clear())

    async def Read(self, request: pb.ReadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DataChunk]:
        start = time.perf_counter()
        try:
            handles = convert.handles_from_pb(request.handles)
            chunk_bytes = min(request.chunk_bytes or self.info.max_chunk_bytes, self.info.max_chunk_bytes)
            with self.store.stream_blocks(request.lease_id, handles, write=False) as views:
                for offset, data in iter_chunks(views, chunk_bytes):
                    yield pb.DataChunk(offset=offset, data=data)
        except _ERRORS as e:
            await _abort(context, e)
        seconds = time.perf_counter() - start
        self.store.record_transfer(TransferReport("grpc", len(handles) * self.store.block_bytes, seconds), "read")

    async def Write(self, request_iterator: AsyncIterator[pb.WriteRequest],
                    context: grpc.aio.ServicerContext) -> pb.WriteResponse:
        start = time.perf_counter()
        try:
            with ExitStack() as pins:
                sink, lease_id = None, 0
                async for msg in request_iterator:
                    if sink is None:  # the first message names the lease and the blocks
                        lease_id, handles = msg.lease_id, convert.handles_from_pb(msg.handles)
                        if not handles:
                            raise InvalidRequestError("handles", "the first Write message must name the blocks")
                        sink = BlockSink(pins.enter_context(self.store.stream_blocks(lease_id, handles, write=True)))
                    if msg.HasField("chunk"):
                        try:
                            sink.write(msg.chunk.offset, msg.chunk.data)
                        except ValueError as e:
                            raise InvalidRequestError("chunk", str(e)) from None
                if sink is None:
                    raise InvalidRequestError("handles", "empty Write stream")
                if not sink.complete:
                    raise InvalidRequestError("chunk", f"stream ended after {sink.received} of {sink.total} bytes")
                self.store.leases.get(lease_id)  # NOT_FOUND if it expired while we streamed
        except _ERRORS as e:
            await _abort(context, e)
        self.store.record_transfer(TransferReport("grpc", sink.received, time.perf_counter() - start), "write")
        return pb.WriteResponse(bytes_written=sink.received)

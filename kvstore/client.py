"""KVStoreClient: what prefill and decode workers use to reuse and fill the shared prefix cache.

The worker owns a local pool in the engine's KV layout,
    local_pool: [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]  (layout dtype)
registered once with NIXL; reads and writes move whole blocks between that pool and the store:
NIXL READ/WRITE when both sides have NIXL, gRPC byte streams otherwise, and for a while after a
NIXL transfer fails with the store still answering (the call is redone over gRPC).

    async with KVStoreClient(address, layout, pool) as kv:
        hit = await kv.match(prompt)                 # leases the cached prefix
        await kv.read(hit, block_table[:len(hit.handles)])
        await kv.release(hit.lease_id)
        ...                                          # prefill the rest
        await kv.write(prompt, block_table)          # share it with every other worker
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Sequence

import grpc
import torch

from engine.kv_layout import KVLayout
from grove.internal.v1 import kvstore_pb2 as pb
from grove.internal.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore.byte_stream import BlockSink, iter_chunks
from kvstore.errors import (InvalidRequestError, LeaseNotFoundError, NixlTimeoutError, NixlTransferError, StoreFullError,
                            StoreRestartedError)
from kvstore.nixl_plane import NixlPlane, RemotePool, nixl_available
from kvstore.types import BlockHandle, ConnectInfo, MatchResult, StoreStats, TransferReport
from protocol import kvstore as convert
from runtime.rpc_errors import describe

logger = logging.getLogger(__name__)
NIXL_RETRY_S = 60.0  # after a NIXL transfer fails, the data goes over gRPC this long

_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: LeaseNotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: StoreFullError,
}


def _typed(e: grpc.aio.AioRpcError) -> Exception:
    """The store's refusals come back as kvstore's typed errors; anything else stays an RPC error."""
    cls = _ERRORS.get(e.code())
    if cls is InvalidRequestError:
        return InvalidRequestError("kvstore", e.details() or "")
    return cls(e.details()) if cls else e


class KVStoreClient:
    def __init__(self, address: str, layout: KVLayout, local_pool: torch.Tensor, use_nixl: bool = True,
                 timeout_s: float = 30.0, plane: NixlPlane | None = None, plane_pool: str = "local") -> None:
        """``plane``: share an agent the worker already has (with ``local_pool`` registered there as
        ``plane_pool``) instead of making one; the client then never closes it."""
        expected = layout.block_shape
        if tuple(local_pool.shape[1:]) != expected or local_pool.dtype != layout.torch_dtype:
            raise ValueError(f"local pool {tuple(local_pool.shape)} {local_pool.dtype} is not "
                             f"[num_blocks, {', '.join(map(str, expected))}] {layout.torch_dtype}")
        if not local_pool.is_contiguous():
            raise ValueError("local pool must be contiguous")
        self.address = address
        self.layout = layout
        self.local_pool = local_pool
        # [num_blocks, block_bytes] uint8 view of the same memory
        self._local_bytes = local_pool.view(torch.uint8).view(local_pool.shape[0], layout.block_bytes)
        self._want_nixl = use_nixl
        self.timeout_s = timeout_s
        self._shared_plane = plane
        self._plane_pool = plane_pool
        self._ns = convert.namespace_to_pb(layout)
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.KVStoreStub | None = None
        self._plane: NixlPlane | None = None
        self._pools: dict[str, RemotePool] = {}
        self._reports: dict[int, TransferReport] = {}  # NIXL reads to report at release
        self._nixl_off_until = 0.0  # monotonic; a failed NIXL transfer sets it NIXL_RETRY_S ahead
        self.nixl_fallbacks = 0  # NIXL transfers that failed (redone over gRPC unless they timed out)
        self.info: ConnectInfo | None = None

    @property
    def data_plane(self) -> Literal["nixl", "grpc"]:
        return "nixl" if self._plane is not None else "grpc"

    async def start(self) -> None:
        """Connect: check the namespace with the store, and set up NIXL when both sides have it."""
        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = pb_grpc.KVStoreStub(self._channel)
        self.info = convert.connect_from_pb(await self._call(self._stub.Connect, pb.ConnectRequest(ns=self._ns)))
        if self.info.block_bytes != self.layout.block_bytes:
            raise InvalidRequestError("layout", f"store blocks are {self.info.block_bytes} bytes, "
                                                f"ours {self.layout.block_bytes}")
        if self._want_nixl and self.info.nixl_enabled and (self._shared_plane or nixl_available()):
            try:
                self._plane = self._open_plane()
                self._pools = {p.name: p for p in self.info.pools}
            except Exception:  # UCX cannot reach the store, a native error: degrade, loudly
                logger.exception("NIXL setup with kvstore %s failed: using the gRPC fallback", self.address)
        elif self._want_nixl:
            logger.warning("NIXL requested but %s: using the gRPC fallback",
                           "the store serves none" if not self.info.nixl_enabled else "it cannot load here")
        logger.info("connected to kvstore %s (data plane %s)", self.address, self.data_plane)

    def _open_plane(self) -> NixlPlane:
        plane = self._shared_plane
        if plane is None:  # only ever initiates: no progress thread, our polls drive transfers
            plane = NixlPlane("grove-kvclient", progress_thread=False)
            try:
                plane.register_pool(self._plane_pool, self.local_pool)
                plane.add_peer(self.info.nixl_metadata)
            except Exception:
                plane.close()
                raise
        else:
            plane.add_peer(self.info.nixl_metadata)
        return plane

    async def close(self) -> None:
        if self._plane is not None:
            if self._plane is self._shared_plane:
                self._plane.remove_peer(self.info.nixl_agent)
            else:
                self._plane.close()
            self._plane = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "KVStoreClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- cache operations -------------------------------------------------------------------
    def use_layout(self, layout: KVLayout) -> None:
        """Names blocks by ``layout`` from now on: the worker serves other weights (another
        model id) in the same geometry (engine.weight_update)."""
        if layout.geometry != self.layout.geometry:
            raise ValueError(f"{layout} is not this client's geometry ({self.layout})")
        self.layout = layout
        self._ns = convert.namespace_to_pb(layout)

    def _namespace(self, cache_salt: str) -> pb.Namespace:
        return self._ns if not cache_salt else convert.namespace_to_pb(self.layout, cache_salt)

    async def match(self, tokens: Sequence[int], lease: bool = True, cache_salt: str = "") -> MatchResult:
        """Longest cached prefix (full blocks). With ``lease``, its blocks stay put until release.
        ``cache_salt``: only blocks written under the same salt match."""
        req = pb.MatchRequest(ns=self._namespace(cache_salt), tokens=tokens, peek=not lease)
        resp = await self._call(self._stub.Match, req)
        await self._same_store(resp.store_id, resp.lease_id)
        return convert.match_from_pb(resp)

    async def read(self, match: MatchResult, local_block_ids: Sequence[int]) -> int:
        """Copy the first len(local_block_ids) matched blocks into those local blocks; returns bytes."""
        if len(local_block_ids) > len(match.handles):
            raise ValueError(f"{len(local_block_ids)} local blocks for {len(match.handles)} matched ones")
        handles = match.handles[:len(local_block_ids)]
        if not handles:
            return 0
        if self._use_nixl():
            try:
                report = await self._nixl("read", handles, local_block_ids)
            except NixlTransferError as e:
                self._nixl_failed("read", e)
                if isinstance(e, NixlTimeoutError):
                    raise
            else:
                prev = self._reports.get(match.lease_id)
                self._reports[match.lease_id] = report if prev is None else TransferReport(
                    "nixl", prev.bytes + report.bytes, prev.seconds + report.seconds)
                return report.bytes
        sink = BlockSink([self._local_bytes[i] for i in local_block_ids])
        req = pb.ReadRequest(lease_id=match.lease_id, handles=convert.handles_to_pb(handles))
        try:
            async for chunk in self._stub.Read(req, timeout=self.timeout_s):
                sink.write(chunk.offset, chunk.data)
        except grpc.aio.AioRpcError as e:
            raise _typed(e) from None
        if not sink.complete:
            raise RuntimeError(f"Read stream ended after {sink.received} of {sink.total} bytes")
        return sink.received

    async def release(self, lease_id: int) -> None:
        report = self._reports.pop(lease_id, None)
        req = pb.ReleaseRequest(lease_id=lease_id, transfer=convert.report_to_pb(report))
        await self._call(self._stub.Release, req)

    async def write(self, tokens: Sequence[int], local_block_ids: Sequence[int], cache_salt: str = "") -> int:
        """Store the full blocks of ``tokens`` from local blocks (one id per full block, in order;
        extra ids are ignored), under ``cache_salt``'s namespace. Only blocks the store lacks move.
        Returns how many blocks were new."""
        n = len(tokens) // self.layout.block_size
        if len(local_block_ids) < n:
            raise ValueError(f"{n} full blocks of tokens but {len(local_block_ids)} local blocks")
        resp = await self._call(self._stub.Allocate, pb.AllocateRequest(ns=self._namespace(cache_salt), tokens=tokens))
        await self._same_store(resp.store_id, resp.lease_id)
        alloc = convert.allocate_from_pb(resp)
        if not alloc.lease_id:
            return 0
        src = local_block_ids[alloc.num_cached_blocks:alloc.num_cached_blocks + len(alloc.handles)]
        try:
            report = None
            if self._use_nixl():
                try:
                    report = await self._nixl("write", alloc.handles, src)
                except NixlTransferError as e:
                    self._nixl_failed("write", e)
                    if isinstance(e, NixlTimeoutError):
                        raise
            if report is None:
                await self._stream_write(alloc.lease_id, alloc.handles, src)
            req = pb.CommitRequest(lease_id=alloc.lease_id, transfer=convert.report_to_pb(report))
            return convert.commit_from_pb(await self._call(self._stub.Commit, req)).num_new_blocks
        except BaseException:
            await asyncio.shield(self._release_quietly(alloc.lease_id))
            raise

    async def stats(self) -> StoreStats:
        return convert.stats_from_pb(await self._call(self._stub.Stats, pb.StatsRequest()))

    async def clear(self) -> int:
        """Drops every cached block no lease holds; how many."""
        return int((await self._call(self._stub.Clear, pb.ClearRequest())).dropped_blocks)

    # ---- data planes ------------------------------------------------------------------------
    async def _nixl(self, op: Literal["read", "write"], handles: Sequence[BlockHandle],
                    local_block_ids: Sequence[int]) -> TransferReport:
        by_tier: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for h, local in zip(handles, local_block_ids):
            by_tier[h.tier][0].append(h.block)
            by_tier[h.tier][1].append(local)
        move = self._plane.read if op == "read" else self._plane.write
        start = time.perf_counter()
        done = await asyncio.gather(*(
            move(self._pools[tier], remote, self._plane_pool, local, timeout_s=self.timeout_s)
            for tier, (remote, local) in by_tier.items()), return_exceptions=True)
        # raised once every tier's transfer has ended (a timed-out one first: it may not have)
        failed = sorted((e for e in done if isinstance(e, BaseException)), key=lambda e: not isinstance(e, NixlTimeoutError))
        if failed:
            raise failed[0]
        return TransferReport("nixl", sum(s.bytes for s in done), time.perf_counter() - start)

    def _use_nixl(self) -> bool:
        return self._plane is not None and time.monotonic() >= self._nixl_off_until

    def _nixl_failed(self, op: str, exc: NixlTransferError) -> None:
        """A NIXL transfer failed: this call (unless it timed out: NIXL may still be writing) and
        the next ones for ``NIXL_RETRY_S`` go over gRPC. A store that is gone fails there too."""
        self.nixl_fallbacks += 1
        self._nixl_off_until = time.monotonic() + NIXL_RETRY_S
        logger.warning("NIXL %s with kvstore %s failed (%s): %s, and gRPC carries the data for the next %.0f s",
                       op, self.address, exc, "a cache miss" if isinstance(exc, NixlTimeoutError)
                       else "done over gRPC", NIXL_RETRY_S)

    async def _stream_write(self, lease_id: int, handles: Sequence[BlockHandle],
                            local_block_ids: Sequence[int]) -> None:
        views = [self._local_bytes[i] for i in local_block_ids]
        pb_handles = convert.handles_to_pb(handles)

        async def requests() -> AsyncIterator[pb.WriteRequest]:
            first = True
            for offset, data in iter_chunks(views, self.info.max_chunk_bytes):
                chunk = pb.DataChunk(offset=offset, data=data)
                yield pb.WriteRequest(lease_id=lease_id, handles=pb_handles, chunk=chunk) if first else \
                    pb.WriteRequest(chunk=chunk)
                first = False

        await self._call(self._stub.Write, requests())

    async def _same_store(self, store_id: int, lease_id: int) -> None:
        """Raises StoreRestartedError (after giving back the lease it took) when the store answering
        is not the one Connect described: NIXL would address pools that are gone."""
        if store_id != self.info.store_id:
            if lease_id:
                await self._release_quietly(lease_id)
            raise StoreRestartedError(f"kvstore {self.address} restarted (store id {store_id}, connected to "
                                      f"{self.info.store_id}): reconnect")

    async def _release_quietly(self, lease_id: int) -> None:
        try:
            await self._call(self._stub.Release, pb.ReleaseRequest(lease_id=lease_id))
        except Exception as exc:  # noqa: BLE001 - the lease expires anyway
            logger.warning("could not release kvstore lease %d (%s); it will expire", lease_id, describe(exc))

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        if self._stub is None:
            raise RuntimeError("KVStoreClient used before start()")
        try:
            return await method(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _typed(e) from None

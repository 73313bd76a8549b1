"""Pulls a request's prompt KV from the prefill worker that holds it: NIXL READ, else gRPC bytes.

A NIXL READ is one-sided: the holder does not see it, so it cannot refuse a read of blocks whose
lease has ended (and which may hold another request's KV by now). After one, the holder's answer
to ReleaseKV confirms that the lease was still held; without that answer the pull has failed.
Every failure to get the KV is a KVHandoffError: the request's KV is lost, not the decode worker.

A NIXL read that fails while the holder still answers over gRPC (its data plane broken, say, a
port UCX needs blocked between hosts) is read again over gRPC at once, and that holder's KV comes
over gRPC for ``nixl_retry_s`` (60 s) before NIXL is tried again: slower, but served, and counted
(``nixl_fallbacks``) and logged. A read that timed out is not read again at once (NIXL may not
have stopped it writing into the blocks); its request's KV is lost as before, and the next
request's comes over gRPC.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
import torch

from engine.errors import GroveError
from engine.request import KVHandle
from grove.internal.v1 import worker_pb2 as pb
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from kvstore.errors import NixlTimeoutError, NixlTransferError
from kvstore.nixl_plane import NixlPlane
from runtime.grpc_server import insecure_channel
from runtime.kv_transfer import POOL_NAME, TransferTimer, remote_pool, write_block_bytes
from runtime.rpc_errors import describe

logger = logging.getLogger(__name__)
NIXL_RETRY_S = 60.0  # a holder whose NIXL read failed sends its KV over gRPC this long


class KVHandoffError(GroveError, RuntimeError):
    """The handed-over KV could not be had: its holder is unreachable or no longer holds it."""


class KVPuller:
    def __init__(self, pool: torch.Tensor, plane: NixlPlane | None, timeout_s: float = 10.0,
                 nixl_retry_s: float = NIXL_RETRY_S) -> None:
        self.pool = pool  # [num_blocks, *block_shape]
        self.plane = plane
        self.timeout_s = timeout_s
        self.nixl_retry_s = nixl_retry_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._peers: set[str] = set()
        self._nixl_off: dict[str, float] = {}  # holder's NIXL agent -> when NIXL is tried again (monotonic)
        self.nixl = TransferTimer()
        self.grpc = TransferTimer()
        self.nixl_fallbacks = 0  # NIXL reads that failed (redone over gRPC unless they timed out)

    def _stub(self, address: str) -> pb_grpc.PrefillWorkerStub:
        if address not in self._channels:
            self._channels[address] = insecure_channel(address)
        return pb_grpc.PrefillWorkerStub(self._channels[address])

    async def pull(self, kv: KVHandle, local_blocks: list[int], first: int = 0) -> str:
        """Copies the holder's blocks ``kv.block_ids[first:]`` into ``local_blocks`` (same order);
        returns the data plane used ("" when there was nothing to pull). After "nixl", the copy
        holds only once ``release(kv, confirm=True)`` has returned."""
        try:
            return await self._pull(kv, local_blocks, first)
        except (grpc.aio.AioRpcError, NixlTransferError, asyncio.TimeoutError) as e:
            raise KVHandoffError(f"could not pull the KV from {kv.worker_address}: {describe(e)}") from None

    async def _pull(self, kv: KVHandle, local_blocks: list[int], first: int) -> str:
        remote = list(kv.block_ids[first:])
        if len(local_blocks) != len(remote):
            raise ValueError("one local block per remote block")
        if not remote:
            return ""
        t0 = time.perf_counter()
        nbytes = len(local_blocks) * kv.block_bytes
        if self.plane is not None and kv.nixl_agent and time.monotonic() >= self._nixl_off.get(kv.nixl_agent, 0.0):
            try:
                await self._read_nixl(kv, remote, local_blocks)
            except NixlTransferError as e:
                self.nixl_fallbacks += 1
                self._nixl_off[kv.nixl_agent] = time.monotonic() + self.nixl_retry_s
                logger.warning("NIXL read from %s failed (%s): %s, and its KV comes over gRPC for the next %.0f s",
                               kv.worker_address, e, "the KV is lost" if isinstance(e, NixlTimeoutError)
                               else "reading it over gRPC", self.nixl_retry_s)
                if isinstance(e, NixlTimeoutError):
                    raise
                t0 = time.perf_counter()
            else:
                self.nixl.add(nbytes, time.perf_counter() - t0)
                logger.info("kv pull: %d blocks, %d bytes over nixl in %.6f s", len(local_blocks), nbytes,
                            time.perf_counter() - t0)
                return "nixl"
        stream = self._stub(kv.worker_address).ReadKV(
            pb.ReadKVRequest(lease_id=kv.lease_id, block_ids=remote), timeout=self.timeout_s
        )
        async for chunk in stream:
            write_block_bytes(self.pool, local_blocks[chunk.block_index], chunk.offset, chunk.data)
        self.grpc.add(nbytes, time.perf_counter() - t0)
        logger.info("kv pull: %d blocks, %d bytes over grpc in %.6f s", len(local_blocks), nbytes, time.perf_counter() - t0)
        return "grpc"

    async def _read_nixl(self, kv: KVHandle, remote: list[int], local_blocks: list[int]) -> None:
        assert self.plane is not None
        if kv.nixl_agent not in self._peers:
            md = await self._stub(kv.worker_address).NixlMetadata(pb.NixlMetadataRequest(), timeout=self.timeout_s)
            self.plane.add_peer(md.metadata)
            self._peers.add(kv.nixl_agent)
        await self.plane.read(remote_pool(kv), remote, POOL_NAME, local_blocks, timeout_s=self.timeout_s)

    async def renew(self, kv: KVHandle) -> float:
        """Keeps the holder's lease on ``kv`` from ending while this worker waits for room; returns
        the seconds it now lasts. KVHandoffError when it has ended or the holder does not answer."""
        try:
            reply = await self._stub(kv.worker_address).RenewKV(pb.RenewKVRequest(lease_id=kv.lease_id),
                                                                timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise KVHandoffError(f"{kv.worker_address} did not renew the KV lease: {describe(e)}") from None
        if not reply.held:
            raise KVHandoffError(f"the KV lease on {kv.worker_address} ended while this worker waited for room")
        return reply.ttl_s

    async def release(self, kv: KVHandle, confirm: bool = False) -> None:
        """Tells the holder to free the KV; best effort (its lease expires anyway). ``confirm``:
        raises KVHandoffError unless the holder answers that it still held the lease."""
        try:
            reply = await self._stub(kv.worker_address).ReleaseKV(pb.ReleaseKVRequest(lease_id=kv.lease_id),
                                                                  timeout=self.timeout_s if confirm else 15.0)
        except grpc.aio.AioRpcError as e:
            if confirm:
                raise KVHandoffError(f"{kv.worker_address} did not confirm its KV lease after the NIXL read: "
                                     f"{describe(e)}") from None
            logger.warning("ReleaseKV to %s failed (%s); its lease will expire", kv.worker_address, describe(e))
            return
        if confirm and not reply.released:
            raise KVHandoffError(f"the KV lease on {kv.worker_address} ended before the NIXL read was confirmed: "
                                 f"its blocks may hold other KV by now")

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)

"""Pulls a request's prompt KV from the prefill worker that holds it: NIXL READ, else gRPC bytes.

A NIXL READ is one-sided: the holder does not see it, so it cannot refuse a read of blocks whose
lease has ended (and which may hold another request's KV by now). After one, the holder's answer
to ReleaseKV confirms that the lease was still held; without that answer the pull has failed.
Every failure to get the KV is a KVHandoffError: the request's KV is lost, not the decode worker.
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
from kvstore.errors import NixlTransferError
from kvstore.nixl_plane import NixlPlane
from runtime.grpc_server import insecure_channel
from runtime.rpc_errors import describe
from runtime.kv_transfer import POOL_NAME, TransferTimer, remote_pool, write_block_bytes

logger = logging.getLogger(__name__)


class KVHandoffError(GroveError, RuntimeError):
    """The handed-over KV could not be had: its holder is unreachable or no longer holds it."""


class KVPuller:
    def __init__(self, pool: torch.Tensor, plane: NixlPlane | None, timeout_s: float = 10.0) -> None:
        self.pool = pool  # [num_blocks, *block_shape]
        self.plane = plane
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._peers: set[str] = set()
        self.nixl = TransferTimer()
        self.grpc = TransferTimer()

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
        if self.plane is not None and kv.nixl_agent:
            if kv.nixl_agent not in self._peers:
                md = await self._stub(kv.worker_address).NixlMetadata(pb.NixlMetadataRequest(), timeout=self.timeout_s)
                self.plane.add_peer(md.metadata)
                self._peers.add(kv.nixl_agent)
            await self.plane.read(remote_pool(kv), remote, POOL_NAME, local_blocks,
                                  timeout_s=self.timeout_s)
            self.nixl.add(nbytes, time.perf_counter() - t0)
            logger.info("kv pull: %d blocks, %d bytes over nixl in %.6f s", len(local_blocks), nbytes, time.perf_counter() - t0)
            return "nixl"
        stream = self._stub(kv.worker_address).ReadKV(
            pb.ReadKVRequest(lease_id=kv.lease_id, block_ids=remote), timeout=self.timeout_s
        )
        async for chunk in stream:
            write_block_bytes(self.pool, local_blocks[chunk.block_index], chunk.offset, chunk.data)
        self.grpc.add(nbytes, time.perf_counter() - t0)
        logger.info("kv pull: %d blocks, %d bytes over grpc in %.6f s", len(local_blocks), nbytes, time.perf_counter() - t0)
        return "grpc"

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

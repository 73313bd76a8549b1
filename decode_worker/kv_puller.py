"""Pulls a request's prompt KV from the prefill worker that holds it: NIXL READ, else gRPC bytes."""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
import torch

from engine.request import KVHandle
from grove.internal.v1 import worker_pb2 as pb
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from kvstore.nixl_plane import NixlPlane
from runtime.grpc_server import insecure_channel
from runtime.kv_transfer import POOL_NAME, TransferTimer, remote_pool, write_block_bytes

logger = logging.getLogger(__name__)


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
        returns the data plane used ("" when there was nothing to pull)."""
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

    async def release(self, kv: KVHandle) -> None:
        """Tells the holder to free the KV; best effort (its lease expires anyway)."""
        try:
            await self._stub(kv.worker_address).ReleaseKV(pb.ReleaseKVRequest(lease_id=kv.lease_id), timeout=15.0)
        except grpc.aio.AioRpcError as e:
            logger.warning("ReleaseKV to %s failed (%s); its lease will expire", kv.worker_address, e.code())

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)

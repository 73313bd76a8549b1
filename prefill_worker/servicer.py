"""gRPC face of the prefill worker: thin, maps typed errors to status codes."""
from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

import grpc

from engine.errors import InvalidRequestError, OutOfBlocksError
from grove.internal.v1 import worker_pb2 as pb
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from prefill_worker.service import OverloadedError, PrefillService
from protocol import pipeline as convert
from runtime.kv_transfer import read_block_bytes
from runtime.worker_control import WorkerControlServicer
from runtime.worker_process import ShuttingDownError

logger = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20  # gRPC fallback chunks, well under the message limit


@contextlib.asynccontextmanager
async def _statuses(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """A request's typed errors as their status codes."""
    try:
        yield
    except InvalidRequestError as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except (OverloadedError, OutOfBlocksError) as e:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    except ShuttingDownError as e:  # the gateway sends it to another worker
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))


class PrefillServicer(pb_grpc.PrefillWorkerServicer):
    def __init__(self, service: PrefillService, worker_id: str, profiler_dir: str = "") -> None:
        self.service = service
        self.worker_id = worker_id
        self.control = WorkerControlServicer(service, worker_id, profiler_dir)  # served beside this one

    async def Prefill(self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext) -> pb.PrefillResponse:
        await self.control.refuse_if_asleep(context)
        async with _statuses(context):
            res = await self.service.prefill(convert.work_from_pb(request.request))
        resp = pb.PrefillResponse(first_token=convert.token_to_pb(res.first), cached_tokens=res.cached_tokens,
                                  finish_reason=res.finish_reason or "", text=res.text)
        if res.kv is not None:
            resp.kv.CopyFrom(convert.kv_handle_to_pb(res.kv))
        resp.prompt_logprobs.extend(convert.token_to_pb(t) for t in res.prompt_logprobs)
        convert.stop_reason_to_pb(res.stop_reason, resp.stop_reason)
        return resp

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        await self.control.refuse_if_asleep(context)
        async with _statuses(context):
            vector, cached = await self.service.embed(convert.work_from_pb(request.request),
                                                      convert.pooling_from_pb(request.pooling))
        return pb.EmbedResponse(embedding=vector, cached_tokens=cached)

    async def ReleaseKV(self, request: pb.ReleaseKVRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseKVResponse:
        return pb.ReleaseKVResponse(released=await self.service.release(request.lease_id))

    async def RenewKV(self, request: pb.RenewKVRequest, context: grpc.aio.ServicerContext) -> pb.RenewKVResponse:
        return pb.RenewKVResponse(held=self.service.renew(request.lease_id), ttl_s=self.service.leases.ttl_s)

    async def ReadKV(self, request: pb.ReadKVRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.KVChunk]:
        try:
            blocks = self.service.check_blocks(request.lease_id, list(request.block_ids))
        except KeyError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        pool = self.service.eng.kv.data
        for i, block in enumerate(blocks):
            data = read_block_bytes(pool, block)
            for off in range(0, len(data), CHUNK_BYTES):
                yield pb.KVChunk(block_index=i, offset=off, data=bytes(data[off : off + CHUNK_BYTES]))

    async def NixlMetadata(self, request: pb.NixlMetadataRequest, context: grpc.aio.ServicerContext) -> pb.NixlMetadataResponse:
        plane = self.service.plane
        if plane is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "NIXL is off on this worker")
        return pb.NixlMetadataResponse(agent=plane.name, metadata=plane.metadata())

    async def Stats(self, request: pb.WorkerStatsRequest, context: grpc.aio.ServicerContext) -> pb.WorkerStats:
        return pb.WorkerStats(worker_id=self.worker_id, role="prefill", **self.service.stats(),
                              asleep=self.control.sleep.asleep)

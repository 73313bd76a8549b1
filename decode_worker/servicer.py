"""gRPC face of the decode worker: thin, maps typed errors to status codes."""
from __future__ import annotations

from typing import AsyncIterator

import grpc

from decode_worker.kv_puller import KVHandoffError
from decode_worker.service import DecodeService
from engine.errors import InvalidRequestError, OutOfBlocksError
from grove.internal.v1 import worker_pb2 as pb
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from protocol import pipeline as convert
from runtime.worker_control import WorkerControlServicer
from runtime.worker_process import ShuttingDownError


class DecodeServicer(pb_grpc.DecodeWorkerServicer):
    def __init__(self, service: DecodeService, worker_id: str, profiler_dir: str = "") -> None:
        self.service = service
        self.worker_id = worker_id
        self.control = WorkerControlServicer(service, worker_id, profiler_dir)  # served beside this one

    async def Decode(self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DecodeChunk]:
        await self.control.refuse_if_asleep(context)
        try:
            work = convert.work_from_pb(request.request)
            stream = self.service.decode(work, convert.token_from_pb(request.first_token), request.first_text,
                                         convert.kv_handle_from_pb(request.kv))
            async for chunk in stream:
                yield convert.decode_chunk_to_pb(chunk)
        except InvalidRequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except OutOfBlocksError as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except ShuttingDownError as e:  # nothing decoded: the gateway sends it to another decode worker
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except KVHandoffError as e:  # the request's KV is lost, not this worker: the gateway prefills again
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"KV handoff failed: {e}")

    async def Stats(self, request: pb.WorkerStatsRequest, context: grpc.aio.ServicerContext) -> pb.WorkerStats:
        return pb.WorkerStats(worker_id=self.worker_id, role="decode", **self.service.stats(),
                              asleep=self.control.sleep.asleep)

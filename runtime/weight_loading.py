"""A worker's side of a weight update from disk (both workers' ``LoadWeights`` and
``CommitWeights``; the gateway's ``/update_weights`` drives them, engine.weight_update does the
work): the checkpoint is read on the engine's thread beside the weights served, then served from
the next step on, once the kvstore writes under way (named by the old weights) are done."""
from __future__ import annotations

import logging

import grpc

from engine import weight_update
from engine.async_engine import AsyncEngine
from engine.errors import InvalidRequestError
from engine.weight_update import EngineBusyError, LoadedWeights
from grove.internal.v1 import worker_pb2 as pb
from kvstore.shared_cache import SharedCache

logger = logging.getLogger(__name__)


class WorkerWeights:
    def __init__(self) -> None:
        self._loaded: LoadedWeights | None = None  # read, not yet served

    async def load(self, engine: AsyncEngine, request: pb.LoadWeightsRequest,
                   context: grpc.aio.ServicerContext) -> pb.LoadWeightsResponse:
        self._loaded = None  # a second load replaces the first (its memory goes first)
        try:
            self._loaded = await engine.call(weight_update.load, engine.engine, request.path)
        except InvalidRequestError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, e.message)
        assert self._loaded is not None
        return pb.LoadWeightsResponse(model_id=self._loaded.model_id)

    async def commit(self, engine: AsyncEngine, kvstore: SharedCache | None, request: pb.CommitWeightsRequest,
                     context: grpc.aio.ServicerContext) -> pb.CommitWeightsResponse:
        loaded, self._loaded = self._loaded, None
        if request.discard:
            return pb.CommitWeightsResponse(model_id=engine.engine.layout.model_id)
        if loaded is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no weights loaded here to serve (LoadWeights "
                                                                     "first)")
        assert loaded is not None
        if kvstore is not None:
            await kvstore.settle()
        try:
            model_id = await engine.call(weight_update.commit, engine.engine, loaded)
        except EngineBusyError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if kvstore is not None:
            kvstore.client.use_layout(engine.engine.layout)
        return pb.CommitWeightsResponse(model_id=model_id)

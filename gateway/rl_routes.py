"""vLLM's endpoints for reinforcement learning, in development mode (``VLLM_SERVER_DEV_MODE=1`` or
``--server-dev-mode``): a trainer pauses generation, puts new weights in, and resumes, with no
restart and no request running across two sets of weights.

- ``POST /pause?mode=abort|wait``: requests that arrive wait until ``/resume``; those in flight
  end now with what they had, finish reason ``abort`` (the default, as vLLM's), or finish
  (``wait``). Answers once none is in flight. ``GET /is_paused``, ``POST /resume``.
- ``POST /update_weights`` ``{"update_info": {"path": DIR}}``: vLLM's weight transfer with its
  disk backend (the only one here: ``--weight-transfer-config '{"backend": "disk"}'``, the
  default): a checkpoint of the same architecture in a directory every worker reads. Every worker
  loads it beside the weights it serves; once all have, all serve it (if any cannot load it, none
  does, and the error names it). Only while paused. ``POST /init_weight_transfer_engine`` answers
  as vLLM's does (the disk backend needs no rendezvous).
- Sleep mode (with ``--enable-sleep-mode``): ``POST /sleep?level=1|2&mode=abort|wait`` pauses as
  ``/pause`` does, then every worker gives back its KV cache (level 1) and its weights (level 2)
  (engine.sleep_mode); ``POST /wake_up?tags=weights&tags=kv_cache`` takes them back (every tag by
  default), and generation resumes once nothing sleeps; ``GET /is_sleeping``. An RL trainer's
  step: ``/sleep?level=2``, ``/wake_up?tags=weights``, ``/update_weights``, ``/wake_up?tags=kv_cache``.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from engine.errors import InvalidRequestError
from engine.sleep_mode import TAGS as SLEEP_TAGS
from gateway.admission import PAUSE_MODES, PauseMode
from gateway.core import GatewayCore
from gateway.dev_routes import on_every_worker
from gateway.http_common import error_response
from gateway.router import Worker
from grove.internal.v1 import worker_pb2 as pb

logger = logging.getLogger(__name__)
LOAD_TIMEOUT_S = 600.0  # a worker reads a whole checkpoint
COMMIT_TIMEOUT_S = 60.0
WEIGHT_TRANSFER_BACKENDS = ("disk",)


def weight_transfer_backend(config: str) -> str:
    """vLLM's ``--weight-transfer-config`` (JSON): its backend, which must be one Grove has."""
    try:
        backend = json.loads(config).get("backend", "disk") if config else "disk"
    except (ValueError, AttributeError):
        raise InvalidRequestError("--weight-transfer-config", f"is not a JSON object: {config!r}") from None
    if backend not in WEIGHT_TRANSFER_BACKENDS:
        raise InvalidRequestError("--weight-transfer-config", f"backend {backend!r} is not supported (Grove reads new "
                                                              f"weights from disk: {list(WEIGHT_TRANSFER_BACKENDS)})")
    return backend


def pause_mode(request: Request) -> PauseMode:
    """The ``mode`` query parameter (vLLM's deprecated ``wait_for_inflight_requests=true`` means
    ``wait``); "keep" (requests frozen in the workers' batches) is refused by name."""
    q = request.query_params
    mode = q.get("mode") or ("wait" if q.get("wait_for_inflight_requests", "").lower() == "true" else "abort")
    if mode not in PAUSE_MODES:
        raise InvalidRequestError("mode", f"must be one of {list(PAUSE_MODES)}, got {mode!r}" +
                                  (" (requests kept in the workers' batches across a weight update are not "
                                   "supported: they would go on with other weights)" if mode == "keep" else ""))
    return mode  # type: ignore[return-value]


def sleep_level(request: Request) -> int:
    level = request.query_params.get("level", "1")
    if level not in ("1", "2"):
        raise InvalidRequestError("level", f"must be 1 or 2, got {level!r}")
    return int(level)


def add_rl_routes(app: FastAPI, core: GatewayCore) -> None:
    admission = core.admission

    @app.post("/pause")
    async def pause(request: Request) -> Response:
        try:
            mode = pause_mode(request)
        except InvalidRequestError as e:
            return error_response(e)
        await admission.pause(mode)
        return JSONResponse({"status": "paused"})

    @app.post("/resume")
    async def resume() -> Response:
        admission.resume()
        return JSONResponse({"status": "resumed"})

    @app.get("/is_paused")
    async def is_paused() -> Response:
        return JSONResponse({"is_paused": admission.paused})

    @app.post("/sleep")
    async def sleep(request: Request) -> Response:
        try:
            if not core.config.sleep_mode:
                raise InvalidRequestError("sleep", "sleep mode is off: start the gateway with --enable-sleep-mode")
            level, mode = sleep_level(request), pause_mode(request)
        except InvalidRequestError as e:
            return error_response(e)
        await admission.pause(mode)
        slept, failed = await on_every_worker(
            core, lambda w, stub: stub.Sleep(pb.SleepRequest(level=level), timeout=COMMIT_TIMEOUT_S))
        if failed is not None:  # all or nothing: those asleep wake, generation goes on
            await on_every_worker(core, lambda w, stub: stub.WakeUp(pb.WakeUpRequest(), timeout=LOAD_TIMEOUT_S))
            admission.resume()
            return failed
        logger.info("asleep (level %d): %.1f MiB given back by %d workers", level,
                    sum(r.bytes for r in slept.values()) / 2**20, len(slept))
        return Response(status_code=200)

    @app.post("/wake_up")
    async def wake_up(request: Request) -> Response:
        tags = request.query_params.getlist("tags")
        if unknown := [t for t in tags if t not in SLEEP_TAGS]:
            return error_response(InvalidRequestError("tags", f"unknown {unknown}: the tags are {list(SLEEP_TAGS)}"))
        woken, failed = await on_every_worker(
            core, lambda w, stub: stub.WakeUp(pb.WakeUpRequest(tags=tags), timeout=LOAD_TIMEOUT_S))
        if failed is not None:
            return failed
        if not any(r.asleep for r in woken.values()):
            admission.resume()
        return Response(status_code=200)

    @app.get("/is_sleeping")
    async def is_sleeping() -> Response:
        stats, failed = await on_every_worker(
            core, lambda w, _: w.role_stub.Stats(pb.WorkerStatsRequest(), timeout=COMMIT_TIMEOUT_S))
        return failed or JSONResponse({"is_sleeping": any(s.asleep for s in stats.values())})

    @app.post("/init_weight_transfer_engine")
    async def init_weight_transfer_engine(request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("init_info"), dict):
            return error_response(InvalidRequestError("init_info", "is required (an object)"))
        return JSONResponse({"message": "Weight transfer initialized"})

    @app.post("/update_weights")
    async def update_weights(request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, Response):
            return body
        info = body.get("update_info")
        if not isinstance(info, dict) or not isinstance(info.get("path"), str) or not info["path"]:
            return error_response(InvalidRequestError(
                "update_info", "must be an object with a 'path': the checkpoint's directory (config.json and "
                               "*.safetensors), read by every worker (the disk backend)"))
        if not admission.paused or admission.in_flight:
            return error_response(InvalidRequestError(
                "update_weights", "generation is not paused: POST /pause first, so that no request runs across two "
                                  "sets of weights"))
        path = info["path"]

        async def load(w: Worker, stub: Any) -> pb.LoadWeightsResponse:
            return await stub.LoadWeights(pb.LoadWeightsRequest(path=path), timeout=LOAD_TIMEOUT_S)

        _, failed = await on_every_worker(core, load)
        if failed is not None:  # none serves it: each drops what it loaded
            await on_every_worker(core, lambda w, stub: stub.CommitWeights(pb.CommitWeightsRequest(discard=True),
                                                                           timeout=COMMIT_TIMEOUT_S))
            logger.warning("weights of %s not served: a worker could not load them", path)
            return failed
        served, failed = await on_every_worker(
            core, lambda w, stub: stub.CommitWeights(pb.CommitWeightsRequest(), timeout=COMMIT_TIMEOUT_S))
        core.router.forget_affinity()  # the prefixes cached so far are the old weights'
        if failed is not None:
            logger.error("weights of %s served by %s only", path, sorted(served))
            return failed
        model_ids = {r.model_id for r in served.values()}
        logger.info("weights updated from %s: model id %s on %d workers", path, model_ids, len(served))
        return JSONResponse({"message": "Weights updated", "model_id": model_ids.pop() if len(model_ids) == 1 else "",
                             "workers": {a: r.model_id for a, r in served.items()}})


async def _json(request: Request) -> dict[str, Any] | Response:
    try:
        body = await request.json()
    except ValueError:
        return error_response(InvalidRequestError("body", "is not valid JSON"))
    if not isinstance(body, dict):
        return error_response(InvalidRequestError("body", "must be a JSON object"))
    return body

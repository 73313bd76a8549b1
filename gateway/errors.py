"""Errors the gateway reports to clients, each with its HTTP and gRPC status."""
from __future__ import annotations

import grpc

from engine.errors import GroveError, InvalidRequestError


class ModelNotFoundError(InvalidRequestError):
    """A model (or LoRA adapter) name not served here: HTTP 404 as vLLM answers it; gRPC
    INVALID_ARGUMENT, a field of the request."""


class OverloadedError(GroveError):
    """HTTP 429 / RESOURCE_EXHAUSTED."""


class UnavailableError(GroveError):
    """HTTP 503 / UNAVAILABLE: no healthy worker, or one died mid-request."""


def http_status(exc: BaseException) -> int:
    if isinstance(exc, ModelNotFoundError):
        return 404
    if isinstance(exc, InvalidRequestError):
        return 400
    if isinstance(exc, OverloadedError):
        return 429
    return 503


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, OverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE

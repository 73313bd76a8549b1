"""Errors of gRPC calls, in one line for logs and error messages."""
from __future__ import annotations

import grpc


def describe(exc: BaseException) -> str:
    """``CODE: details`` for a failed gRPC call (whose ``str`` spans several lines and, for a
    peer that vanished, says nothing); ``Type: message`` for anything else."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and hasattr(exc, "details"):
        return f"{exc.code().name}: {exc.details() or 'no details'}"
    return f"{type(exc).__name__}: {exc}"

"""Typed errors of the KV store. The servicer maps each to a gRPC status code:

    InvalidRequestError -> INVALID_ARGUMENT   (wrong dtype, shape, namespace, tokens, byte count)
    LeaseNotFoundError  -> NOT_FOUND          (unknown or expired lease, handle not held by it)
    StoreFullError      -> RESOURCE_EXHAUSTED (no free block and nothing evictable)

StoreRestartedError is the client's own: the store answering is not the one it connected to.
"""
from __future__ import annotations

from engine.errors import GroveError, InvalidRequestError, OutOfBlocksError

__all__ = ["InvalidRequestError", "LeaseNotFoundError", "StoreFullError", "NixlTransferError", "NixlTimeoutError",
           "StoreRestartedError"]


class LeaseNotFoundError(GroveError, LookupError):
    """A lease or block handle the store does not know (never issued, released or expired)."""


class StoreFullError(OutOfBlocksError):
    """Every tier is full of blocks that are leased or otherwise unevictable."""


class NixlTransferError(GroveError, RuntimeError):
    """A NIXL transfer failed or timed out."""


class NixlTimeoutError(NixlTransferError):
    """A NIXL transfer still unfinished at its timeout (aborted, as far as NIXL could)."""


class StoreRestartedError(GroveError, RuntimeError):
    """The store restarted since Connect: its pools are not the ones the client knows (reconnect)."""

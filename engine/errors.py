"""Typed errors raised at Grove's boundaries; servicers map them to status codes."""
from __future__ import annotations


class GroveError(Exception):
    """Base of every error Grove raises on purpose."""


class InvalidRequestError(GroveError, ValueError):
    """The request itself is wrong (HTTP 400 / INVALID_ARGUMENT). ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class OutOfBlocksError(GroveError, RuntimeError):
    """Not enough free KV blocks (HTTP 429 / RESOURCE_EXHAUSTED when it reaches a client)."""


class ModelLoadError(GroveError, RuntimeError):
    """A model directory cannot be loaded into Grove's model code."""

"""Anthropic's Messages API over HTTP (placeholder, filled below)."""
from __future__ import annotations

from fastapi import FastAPI

from gateway.core import GatewayCore


def add_messages_routes(app: FastAPI, core: GatewayCore) -> None:
    return None

"""The kvstore as the prefill worker leans on it: a shared cache that may be away.

No request fails for the cache. A call that fails or outlasts the client's timeout counts as a
miss (logged, counted in ``failures``), and the kvstore is left alone for ``cooldown_s``, so the
requests behind it do not each wait out the timeout. Then one reconnect runs in the background
(Connect again: a restarted store has new NIXL metadata and pools); requests use the store again
once it succeeds. A worker whose kvstore is down at startup starts all the same, the same way.

Refusals that are part of normal service (the store is full, a lease expired, a request it finds
invalid) are counted and logged but leave the connection alone.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from kvstore.client import KVStoreClient
from kvstore.errors import InvalidRequestError, LeaseNotFoundError, StoreFullError

logger = logging.getLogger(__name__)

COOLDOWN_S = 5.0


class SharedCache:
    def __init__(self, client: KVStoreClient, cooldown_s: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0  # calls that failed, connects included
        self.connected = False
        self._retry_at = 0.0
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connects once. A store that is away leaves the worker serving without the cache until a
        reconnect works; one that refuses our layout (another model, dtype or Grove version) is a
        misconfiguration, raised."""
        await self._connect(first=True)

    def ready(self) -> KVStoreClient | None:
        """The client while the store is reachable; None while it is away (starting a reconnect
        in the background once the cool-down is over)."""
        if self.connected:
            return self.client
        if self._reconnecting is None and self.clock() >= self._retry_at:
            self._reconnecting = asyncio.create_task(self._connect())
            self._reconnecting.add_done_callback(lambda _: setattr(self, "_reconnecting", None))
        return None

    def failed(self, what: str, exc: BaseException) -> None:
        """Counts a failed call; one that says the store is away (not a refusal) drops the
        connection for the cool-down."""
        self.failures += 1
        if isinstance(exc, (StoreFullError, LeaseNotFoundError, InvalidRequestError)):
            logger.warning("kvstore %s refused: %s", what, exc)
            return
        if self.connected:
            logger.warning("kvstore %s %s failed (%s: %s): serving without the shared cache, reconnecting in %.0f s",
                           self.client.address, what, type(exc).__name__, exc, self.cooldown_s)
        self.connected = False
        self._retry_at = self.clock() + self.cooldown_s

    async def _connect(self, first: bool = False) -> None:
        try:
            await self.client.close()  # the old channel and NIXL peer, if any
            await self.client.start()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the worker serving without the cache
            if first and isinstance(exc, InvalidRequestError):
                raise
            self.failures += 1
            self._retry_at = self.clock() + self.cooldown_s
            # the first failure is worth a warning; the retries every cool-down are not
            (logger.warning if first else logger.debug)(
                "kvstore %s unreachable (%s: %s): serving without the shared cache, retrying every %.0f s",
                self.client.address, type(exc).__name__, exc, self.cooldown_s)
            return
        if not first:
            logger.info("kvstore %s reconnected", self.client.address)
        self.connected = True

    async def close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        await self.client.close()

"""The kvstore as a worker leans on it: a shared cache that may be away.

Prefill workers read prefixes from it and write their prompts' blocks to it; decode workers write
what they generated (a chat's next turn finds its previous answer there). Writes and the release
of read leases run in the background: no request waits for the cache.

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
from typing import Callable, Coroutine, Sequence

from engine.async_engine import AsyncEngine
from kvstore.client import KVStoreClient
from kvstore.errors import InvalidRequestError, LeaseNotFoundError, StoreFullError
from kvstore.nixl_plane import NixlPlane
from runtime.engine_metrics import ServiceMetric
from runtime.rpc_errors import describe
from runtime.kv_transfer import POOL_NAME

logger = logging.getLogger(__name__)

COOLDOWN_S = 5.0
WRITE_TIMEOUT_S = 10.0


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
        self._background: set[asyncio.Task[None]] = set()

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
            logger.warning("kvstore %s %s failed (%s): serving without the shared cache, reconnecting in %.0f s",
                           self.client.address, what, describe(exc), self.cooldown_s)
        self.connected = False
        self._retry_at = self.clock() + self.cooldown_s

    def write_back(self, engine: AsyncEngine, tokens: Sequence[int], blocks: list[int], cache_salt: str,
                   owned: bool = False) -> None:
        """Shares the full blocks of ``tokens`` with the store, under ``cache_salt``, in the
        background. ``blocks``: the local blocks holding their KV, one per block of ``tokens`` in
        order (a partial last one is not written). Only blocks the store lacks move.

        ``owned``: the caller hands over its reference on ``blocks``: they are freed once written
        (or at once, with the store away). Otherwise the write takes references of its own.
        """
        eng = engine.engine
        bs = eng.config.block_size
        full = min(len(tokens) // bs, len(blocks))
        mine = blocks[:full]
        client = self.ready()
        if not owned and (client is None or not mine):
            return  # nothing to write and nothing to free

        async def write() -> None:
            if not owned:
                await engine.call(eng.allocator.share, mine)  # the write keeps its own reference
            try:
                if client is not None and mine:
                    try:
                        await asyncio.wait_for(client.write(tokens[: full * bs], mine, cache_salt), WRITE_TIMEOUT_S)
                    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation: never fail a request
                        self.failed("write", exc)
            finally:
                await engine.call(eng.allocator.free, blocks[::-1] if owned else mine)

        self.in_background(write())

    def release(self, lease_id: int) -> None:
        """Ends a read lease in the background (one that cannot be ended expires in the store)."""
        async def release() -> None:
            try:
                await self.client.release(lease_id)
            except Exception as exc:  # noqa: BLE001
                self.failed("release", exc)

        self.in_background(release())

    def in_background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Waits for the writes and releases under way (before the worker's weights change: a
        write names its blocks by the weights when it is sent)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def metrics(self) -> list[ServiceMetric]:
        """The kvstore as this worker sees it (runtime.engine_metrics, at scrape time)."""
        return [ServiceMetric("counter", "grove:kvstore_failures", "kvstore calls that failed (each a cache miss).",
                              self.failures),
                ServiceMetric("gauge", "grove:kvstore_connected", "1 while the kvstore is in use, 0 while it is away.",
                              float(self.connected)),
                ServiceMetric("counter", "grove:kvstore_nixl_fallbacks",
                              "NIXL transfers with the kvstore that failed (redone over gRPC unless timed out; gRPC "
                              "then carries the data for a while).",
                              self.client.nixl_fallbacks)]

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
                "kvstore %s unreachable (%s): serving without the shared cache, retrying every %.0f s",
                self.client.address, describe(exc), self.cooldown_s)
            return
        if not first:
            logger.info("kvstore %s reconnected", self.client.address)
        self.connected = True

    async def close(self) -> None:
        """Lets the writes and releases under way finish (a worker shutting down), then disconnects."""
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.close()


async def open_shared_cache(address: str, timeout_s: float, engine: AsyncEngine,
                            plane: NixlPlane | None) -> SharedCache | None:
    """A worker's SharedCache on the kvstore at ``address`` ('' = none), connected (or reconnecting
    in the background). One NIXL agent a process: the client shares the worker's handoff plane."""
    if not address:
        return None
    eng = engine.engine
    cache = SharedCache(KVStoreClient(address, eng.layout, eng.kv.data, use_nixl=plane is not None,
                                      timeout_s=timeout_s, plane=plane, plane_pool=POOL_NAME))
    await cache.start()
    return cache

"""The KV store's gRPC server: ``create_server(address, servicer) -> (server, port)`` and ``serve``,
the process main loop (health, metrics, lease expiry, graceful shutdown on SIGTERM)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from engine.kv_layout import GROVE_VERSION
from grove.internal.v1 import kvstore_pb2_grpc as pb_grpc
from kvstore.config import ServerConfig, StoreConfig
from kvstore.metrics import serve_metrics
from kvstore.nixl_plane import NixlPlane, nixl_available
from kvstore.servicer import KVStoreServicer
from kvstore.snapshot import load_snapshot, save_snapshot, snapshot_periodically
from kvstore.store import KVStore
from kvstore.types import ConnectInfo
from runtime.process import write_ready_file

logger = logging.getLogger(__name__)
SERVICE_NAME = "grove.internal.v1.KVStore"
MESSAGE_LIMIT = 4 << 20  # gRPC's default, stated: data chunks stay under it


async def create_server(address: str, servicer: KVStoreServicer,
                        health: health_aio.HealthServicer | None = None) -> tuple[grpc.aio.Server, int]:
    """Start a server for ``servicer`` plus the standard health service on ``address`` (port 0:
    any free port); returns it and the bound port. Call inside the running event loop."""
    server = grpc.aio.server(options=[("grpc.max_send_message_length", MESSAGE_LIMIT),
                                      ("grpc.max_receive_message_length", MESSAGE_LIMIT)])
    pb_grpc.add_KVStoreServicer_to_server(servicer, server)
    health = health or health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def open_nixl(store: KVStore) -> NixlPlane | None:
    """A NIXL agent with every tier's pool registered, or None when NIXL cannot load."""
    if not nixl_available():
        logger.warning("NIXL unavailable: serving KV over the gRPC fallback only")
        return None
    plane = NixlPlane("grove-kvstore")
    for tier in store.tiers:
        plane.register_pool(tier.name, tier.pool)
    return plane


def connect_info(store: KVStore, plane: NixlPlane | None, config: ServerConfig) -> ConnectInfo:
    pools = tuple(plane.export(t.name) for t in store.tiers) if plane else ()
    return ConnectInfo(GROVE_VERSION, store.block_bytes, plane is not None, plane.name if plane else "",
                       plane.metadata() if plane else b"", pools, config.max_chunk_bytes, store.config.lease_ttl_s,
                       store.store_id)


def _write_port_file(path: str, port: int) -> None:
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)  # atomic: a reader never sees a half-written port


async def _expire_leases(store: KVStore) -> None:
    period = min(1.0, store.config.lease_ttl_s / 4)
    while True:
        await asyncio.sleep(period)
        store.expire()


async def serve(store_config: StoreConfig, config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, give in-flight RPCs ``grace_s``, and return."""
    store = KVStore(store_config)
    if config.snapshot:
        load_snapshot(store, config.snapshot)
    plane = open_nixl(store) if config.use_nixl else None
    servicer = KVStoreServicer(store, connect_info(store, plane, config))
    health = health_aio.HealthServicer()
    server, port = await create_server(config.address, servicer, health)
    host = config.address.rsplit(":", 1)[0].strip("[]")  # /metrics listens where gRPC does
    metrics = (serve_metrics(store, config.metrics_port, host, config.metrics_names) if config.metrics_port >= 0
               else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    expiry = asyncio.create_task(_expire_leases(store))
    snapshots = (asyncio.create_task(snapshot_periodically(store, config.snapshot, config.snapshot_interval_s, stop))
                 if config.snapshot and config.snapshot_interval_s > 0 else None)
    tiers = ", ".join(f"{t.name}: {t.capacity} blocks on {t.device}" for t in store.tiers)
    logger.info("kvstore serving on port %d (%s; %d bytes/block; data plane %s)", port, tiers, store.block_bytes,
                "nixl + grpc" if plane else "grpc")
    if config.port_file:
        _write_port_file(config.port_file, port)
    write_ready_file(config.ready_file, {"grpc_port": port,
                                         "metrics_port": metrics.server_port if metrics is not None else None})
    await stop.wait()
    logger.info("shutting down: draining for up to %.1f s", config.grace_s)
    await health.enter_graceful_shutdown()
    await server.stop(config.grace_s)
    expiry.cancel()
    if metrics is not None:
        metrics.shutdown()
    if plane is not None:
        plane.close()
    if snapshots is not None:
        await snapshots  # (a snapshot under way is finished first: the one below replaces it)
    if config.snapshot:
        try:
            save_snapshot(store, config.snapshot)
        except OSError as e:  # the cache is lost for the next start, not the shutdown
            logger.error("snapshot not written to %s: %s", config.snapshot, e)
    if config.check_integrity_on_exit:
        store.expire()
        store.check_integrity()  # raises AssertionError: the process exits non-zero
        logger.info("integrity checked: %d blocks cached, %d leases open", store.trie.num_nodes, len(store.leases))
    logger.info("kvstore stopped")

"""Worker pools and routing: prefill by prefix affinity balanced with load, decode by load.

Affinity: the gateway remembers which prefill worker last computed each block-aligned prefix
(a hash chain over blocks, bounded LRU); a prompt goes to the worker holding its longest remembered
prefix unless that worker is much busier than the least-loaded one.

Workers are given as ``host:port`` addresses or as ``dns:NAME:PORT`` targets: every address NAME
resolves to is a worker, re-resolved with each health round (a scaled compose service's replicas).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Sequence

import grpc

from engine.prefix_cache import block_hashes
from grove.internal.v1 import worker_pb2 as pb
from grove.internal.v1 import worker_pb2_grpc as pb_grpc
from runtime.grpc_server import check_health, insecure_channel

logger = logging.getLogger(__name__)
Role = Literal["prefill", "decode"]
DNS_PREFIX = "dns:"
AFFINITY_BLOCKS = 256  # a prompt's first blocks remembered for prefix affinity


@dataclass(slots=True, eq=False)
class Worker:
    address: str
    role: Role
    channel: grpc.aio.Channel
    healthy: bool = False
    in_flight: int = 0
    stats: pb.WorkerStats = field(default_factory=pb.WorkerStats)

    @property
    def prefill(self) -> pb_grpc.PrefillWorkerStub:
        return pb_grpc.PrefillWorkerStub(self.channel)

    @property
    def decode(self) -> pb_grpc.DecodeWorkerStub:
        return pb_grpc.DecodeWorkerStub(self.channel)

    @property
    def control(self) -> pb_grpc.WorkerControlStub:
        """What every worker answers alike (the prefix-cache reset, the profiler, weights, sleep)."""
        return pb_grpc.WorkerControlStub(self.channel)

    @property
    def role_stub(self) -> pb_grpc.PrefillWorkerStub | pb_grpc.DecodeWorkerStub:
        return self.prefill if self.role == "prefill" else self.decode


class Router:
    def __init__(self, prefill: Sequence[str], decode: Sequence[str], block_size: int,
                 affinity_slack: int = 4, affinity_capacity: int = 200_000) -> None:
        self._targets: dict[Role, list[str]] = {"prefill": list(prefill), "decode": list(decode)}
        self.prefill = [Worker(a, "prefill", insecure_channel(a)) for a in prefill if not a.startswith(DNS_PREFIX)]
        self.decode = [Worker(a, "decode", insecure_channel(a)) for a in decode if not a.startswith(DNS_PREFIX)]
        self._retired: list[Worker] = []  # no longer resolved; closed once their calls are done
        self.block_size = block_size
        self.affinity_slack = affinity_slack
        self._affinity: OrderedDict[bytes, Worker] = OrderedDict()
        self._capacity = affinity_capacity
        self.decisions: dict[str, int] = {"prefix_affinity": 0, "load": 0}
        self._task: asyncio.Task[None] | None = None

    def forget_affinity(self) -> None:
        """Forgets which worker computed which prefix (after their caches were reset)."""
        self._affinity.clear()

    # ---- health -----------------------------------------------------------------------------
    def workers(self) -> list[Worker]:
        return self.prefill + self.decode

    async def _resolve(self) -> None:
        for role, targets in self._targets.items():
            if any(t.startswith(DNS_PREFIX) for t in targets):
                found = await asyncio.gather(*(resolve(t) for t in targets))
                if all(a is not None for a in found):  # a failed lookup keeps the pool as it is
                    self._set_pool(role, list(dict.fromkeys(a for addrs in found for a in addrs)))
        done = [w for w in self._retired if w.in_flight == 0]
        self._retired = [w for w in self._retired if w.in_flight > 0]
        await asyncio.gather(*(w.channel.close() for w in done), return_exceptions=True)

    def _set_pool(self, role: Role, addresses: list[str]) -> None:
        pool = self.prefill if role == "prefill" else self.decode
        current = {w.address: w for w in pool}
        for a in addresses:
            if a not in current:
                logger.info("%s worker %s found by DNS", role, a)
        for w in pool:
            if w.address not in addresses:
                logger.info("%s worker %s no longer resolves: removed", role, w.address)
                self._retired.append(w)
        pool[:] = [current.get(a) or Worker(a, role, insecure_channel(a)) for a in addresses]

    async def refresh(self) -> None:
        await self._resolve()

        async def one(w: Worker) -> None:
            ok = await check_health(w.channel, timeout_s=1.0)
            if ok:
                try:
                    w.stats = await w.role_stub.Stats(pb.WorkerStatsRequest(), timeout=1.0)
                except grpc.aio.AioRpcError:
                    ok = False
            if ok != w.healthy:
                logger.log(logging.INFO if ok else logging.WARNING, "%s worker %s is %s", w.role, w.address,
                           "healthy" if ok else "UNHEALTHY")
            w.healthy = ok

        await asyncio.gather(*(one(w) for w in self.workers()))

    def start(self, interval_s: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                await self.refresh()
                await asyncio.sleep(interval_s)

        self._task = asyncio.create_task(loop(), name="router-health")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        await asyncio.gather(*(w.channel.close() for w in self.workers() + self._retired), return_exceptions=True)

    def mark_failed(self, w: Worker) -> None:
        if w.healthy:
            logger.warning("%s worker %s failed a call: marked unhealthy", w.role, w.address)
        w.healthy = False

    # ---- choices ----------------------------------------------------------------------------
    def choose_prefill(self, prompt: Sequence[int], exclude: Sequence[Worker] = (),
                       cache_salt: str = "") -> Worker | None:
        live = [w for w in self.prefill if w.healthy and w not in exclude]
        if not live:
            return None
        least = min(live, key=lambda w: (w.in_flight, w.stats.num_waiting))
        # the workers' own chain (engine.prefix_cache): a salted prompt follows only its salt's
        hashes = block_hashes(prompt, self.block_size, limit=AFFINITY_BLOCKS, cache_salt=cache_salt)
        owner = None
        for h in hashes:  # the longest remembered prefix wins
            w = self._affinity.get(h)
            if w is not None:
                owner = w
        if owner is not None and owner in live and owner.in_flight <= least.in_flight + self.affinity_slack:
            chosen, reason = owner, "prefix_affinity"
        else:
            chosen, reason = least, "load"
        self.decisions[reason] += 1
        for h in hashes:
            self._affinity[h] = chosen
            self._affinity.move_to_end(h)
        while len(self._affinity) > self._capacity:
            self._affinity.popitem(last=False)
        return chosen

    def choose_decode(self, exclude: Sequence[Worker] = ()) -> Worker | None:
        live = [w for w in self.decode if w.healthy and w not in exclude]
        if not live:
            return None
        return min(live, key=lambda w: (w.in_flight, -w.stats.free_blocks))


async def resolve(target: str) -> list[str] | None:
    """``dns:NAME:PORT`` -> the ``ip:port`` of every address NAME has (IPv4 if any, else IPv6); a plain
    address -> itself; None if the lookup failed."""
    if not target.startswith(DNS_PREFIX):
        return [target]
    name, _, port = target.removeprefix(DNS_PREFIX).rpartition(":")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        logger.debug("cannot resolve %s: %s", name, e)
        return None
    v4 = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET})
    v6 = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET6})
    return [f"{ip}:{port}" for ip in v4] if v4 else [f"[{ip}]:{port}" for ip in v6]

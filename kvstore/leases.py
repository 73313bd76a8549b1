"""Leases: reference counts with an expiry, so a crashed client cannot pin blocks forever.

A read lease (from Match) pins the matched trie nodes. A write lease (from Allocate) pins the
cached prefix it builds on and owns the freshly allocated blocks until Commit inserts them into the
trie (or Release / expiry frees them). Pinning = one allocator reference per block.
"""
from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

from kvstore.errors import LeaseNotFoundError
from kvstore.trie import BlockKey, TrieNode
from kvstore.types import BlockHandle


@dataclass(slots=True)
class Lease:
    kind: Literal["read", "write"]
    namespace: str
    expires_at: float
    pinned: list[TrieNode]  # read: the matched path; write: the cached prefix (token order)
    pending: list[BlockHandle] = field(default_factory=list)  # write: owned, not yet in the trie
    keys: list[BlockKey] = field(default_factory=list)  # write: every full block of the request
    lease_id: int = 0  # set by LeaseTable.add


class LeaseTable:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._leases: dict[int, Lease] = {}
        self._deadlines: list[tuple[float, int]] = []  # min-heap; entries of ended leases are skipped

    def add(self, lease: Lease) -> Lease:
        lease_id = 0
        while lease_id == 0 or lease_id in self._leases:  # random: ids of a restarted store never collide
            lease_id = secrets.randbits(63)
        lease.lease_id = lease_id
        self._leases[lease_id] = lease
        heapq.heappush(self._deadlines, (lease.expires_at, lease_id))
        return lease

    def get(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError(f"lease {lease_id} is unknown, released or expired")
        return lease

    def pop(self, lease_id: int) -> Lease:
        lease = self.get(lease_id)
        del self._leases[lease_id]
        return lease

    def pop_expired(self) -> list[Lease]:
        now = self.clock()
        out: list[Lease] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, lease_id = heapq.heappop(self._deadlines)
            lease = self._leases.pop(lease_id, None)
            if lease is not None:
                out.append(lease)
        if len(self._deadlines) > 4 * len(self._leases) + 64:  # drop stale entries of released leases
            self._deadlines = [(d, i) for d, i in self._deadlines if i in self._leases]
            heapq.heapify(self._deadlines)
        return out

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._leases.values()))

"""KV blocks a prefill worker holds for a decode worker: lease id -> blocks, with an expiry."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass


@dataclass(slots=True)
class HeldKV:
    blocks: list[int]
    expires_at: float


class KVLeases:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._held: dict[str, HeldKV] = {}

    def hold(self, blocks: list[int]) -> str:
        lease_id = secrets.token_hex(8)
        self._held[lease_id] = HeldKV(blocks, time.monotonic() + self.ttl_s)
        return lease_id

    def get(self, lease_id: str) -> HeldKV | None:
        return self._held.get(lease_id)

    def renew(self, lease_id: str) -> bool:
        """The lease ends ``ttl_s`` from now; False if it has ended already."""
        held = self._held.get(lease_id)
        if held is None or held.expires_at <= time.monotonic():
            return False
        held.expires_at = time.monotonic() + self.ttl_s
        return True

    def pop(self, lease_id: str) -> HeldKV | None:
        return self._held.pop(lease_id, None)

    def pop_expired(self) -> list[HeldKV]:
        now = time.monotonic()
        gone = [k for k, v in self._held.items() if v.expires_at <= now]
        return [self._held.pop(k) for k in gone]

    def __len__(self) -> int:
        return len(self._held)

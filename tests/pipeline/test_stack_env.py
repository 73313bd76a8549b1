"""The stack's services start with libgomp's shorter spin (launcher.stack.service_env)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.stack import GOMP_SPINCOUNT, Stack, service_env


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_every_service_runs_with_the_short_spin(stack: Stack) -> None:
    """Each running service process (workers, kvstore, gateway) has GOMP_SPINCOUNT: this
    environment's own where it sets one, else the launcher's."""
    want = os.environ.get("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    assert stack.services
    for svc in stack.services:
        assert svc.proc.poll() is None, svc.name
        env = _environ(svc.proc.pid)
        assert env.get("GOMP_SPINCOUNT") == want, svc.name
        assert env.get("UCX_NET_DEVICES") == os.environ.get("UCX_NET_DEVICES", "lo"), svc.name


def test_a_spin_count_already_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("UCX_NET_DEVICES", raising=False)
    env = service_env()
    assert (env["GOMP_SPINCOUNT"], env["UCX_NET_DEVICES"], env["PYTHONUNBUFFERED"]) == (GOMP_SPINCOUNT, "lo", "1")
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    monkeypatch.setenv("UCX_NET_DEVICES", "eth0")
    env = service_env()
    assert (env["GOMP_SPINCOUNT"], env["UCX_NET_DEVICES"]) == ("300000", "eth0")

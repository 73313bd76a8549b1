"""The generic NIXL wrapper on its own (what the P/D handoff reuses worker to worker): two agents,
registered pools, READ and WRITE of scattered block lists, notifications, refusals."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import uvloop

from kvstore.errors import NixlTransferError
from kvstore.nixl_plane import NixlPlane, RemotePool, merge_runs, nixl_available


def test_merge_runs_groups_blocks_adjacent_on_both_sides() -> None:
    local, remote = np.array([0, 1, 2, 7, 8, 3]), np.array([5, 6, 9, 10, 11, 12])
    starts_l, starts_r, lengths = merge_runs(local, remote)
    assert starts_l.tolist() == [0, 2, 7, 3] and starts_r.tolist() == [5, 9, 10, 12]
    assert lengths.tolist() == [2, 1, 2, 1]
    assert [a.size for a in merge_runs(np.array([], dtype=np.int64), np.array([], dtype=np.int64))] == [0, 0, 0]


@pytest.mark.skipif(not nixl_available(), reason="NIXL does not load here")
def test_read_write_and_notify_between_two_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCX_NET_DEVICES", "lo")
    # holder: a decode-style "remote" pool; reader: the initiator (no progress thread needed)
    holder, reader = NixlPlane("test-holder"), NixlPlane("test-reader", progress_thread=False)
    try:
        theirs = torch.randn(10, 3, 128)  # 10 blocks of 1536 bytes
        mine = torch.zeros(6, 3, 128)
        remote = holder.register_pool("kv", theirs)
        reader.register_pool("kv", mine)
        assert remote.block_bytes == 3 * 128 * 4 and remote.num_blocks == 10 and remote.mem_type == "DRAM"
        assert reader.add_peer(holder.metadata()) == holder.name

        async def main() -> None:
            stats = await reader.read(remote, [9, 2, 3, 4], "kv", [0, 1, 2, 3], notif=b"done:1")
            assert stats.bytes == 4 * remote.block_bytes and stats.descriptors == 2  # [9] and [2, 3, 4]
            assert mine[0].equal(theirs[9]) and mine[1:4].equal(theirs[2:5])
            await holder.wait_notif(reader.name, b"done:1", timeout_s=10)
            mine[5].fill_(7.0)
            await reader.write(remote, [0], "kv", [5])
            assert bool((theirs[0] == 7.0).all())
            with pytest.raises(ValueError, match="2 remote blocks for 1 local ones"):
                await reader.read(remote, [1, 2], "kv", [0])
            with pytest.raises(ValueError, match="block ids outside pool 'kv' of 10 blocks"):
                await reader.read(remote, [8, 9, 10], "kv", [0, 1, 2])  # a run that starts inside
            stranger = remote.__class__("nobody", "kv", remote.base_addr, remote.block_bytes, 10, "DRAM", 0)
            with pytest.raises(NixlTransferError, match="peer 'nobody' unknown"):
                await reader.read(stranger, [1], "kv", [0])

        uvloop.run(main())
        with pytest.raises(ValueError, match="registered already"):
            holder.register_pool("kv", theirs)
    finally:
        reader.close()
        holder.close()


# a holder in a process of its own: prints its metadata and pool, exits when told (a line on stdin)
_HOLDER = """
import os, sys, torch
from kvstore.nixl_plane import NixlPlane
plane = NixlPlane("dying-holder")
pool = plane.register_pool("kv", torch.arange(10 * 384, dtype=torch.float32).reshape(10, 384))
print("POOL", plane.metadata().hex(), pool.base_addr, pool.block_bytes, pool.num_blocks, flush=True)
sys.stdin.readline()
os._exit(0)
"""


@pytest.mark.skipif(not nixl_available(), reason="NIXL does not load here")
def test_a_read_from_a_peer_whose_process_is_gone_is_a_transfer_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """NIXL raises its own native error types (nixlRemoteDisconnectError when the peer's process
    has exited): they come out as NixlTransferError, which the decode worker reports as lost KV
    (the gateway prefills it again). Before, one escaped as an unexpected error and failed the
    request (a prefill worker that exited at the end of its drain, in a probe of the stack)."""
    monkeypatch.setenv("UCX_NET_DEVICES", "lo")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=dict(os.environ, UCX_NET_DEVICES="lo"), cwd=str(Path(__file__).parents[2]))
    reader = NixlPlane("test-reader", progress_thread=False)
    try:
        line = ""
        while not line.startswith("POOL "):
            line = holder.stdout.readline().decode()  # (NIXL logs to stdout too)
            assert line, "the holder exited before it told its pool"
        metadata, base, block_bytes, num_blocks = line.split()[1:]
        mine = torch.zeros(4, 384)
        reader.register_pool("kv", mine)
        remote = RemotePool(reader.add_peer(bytes.fromhex(metadata)), "kv", int(base), int(block_bytes),
                            int(num_blocks), "DRAM", 0)

        async def main() -> None:
            await reader.read(remote, [1, 2], "kv", [0, 1], timeout_s=10)
            assert mine[0].equal(torch.arange(384, 768, dtype=torch.float32))
            holder.stdin.write(b"exit\n")
            holder.stdin.flush()
            assert holder.wait(timeout=30) == 0
            with pytest.raises(NixlTransferError, match="dying-holder"):
                await reader.read(remote, [3], "kv", [2], timeout_s=10)

        uvloop.run(main())
    finally:
        reader.close()
        holder.kill()
        holder.wait()

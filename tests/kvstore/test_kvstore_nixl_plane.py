"""The generic NIXL wrapper on its own (what the P/D handoff reuses worker to worker): two agents,
registered pools, READ and WRITE of scattered block lists, notifications, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import uvloop

from kvstore.errors import NixlTransferError
from kvstore.nixl_plane import NixlPlane, merge_runs, nixl_available


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

"""KV write by slot mapping and slot copies (lookahead compaction) against torch references."""
from __future__ import annotations

import pytest
import torch

from engine.attention.torch_backend import TorchAttentionBackend
from kernels.kv_write import copy_slots, copy_slots_ref, write_kv, write_kv_ref
from tests.kernels.paged_data import DEVICE


def _pool(num_blocks: int, layers: int, page: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
          seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_blocks, layers, 2, page, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)


@pytest.mark.parametrize("page, kv_heads, head_dim, dtype", [
    (16, 2, 64, torch.float32), (16, 3, 128, torch.float16), (8, 1, 80, torch.bfloat16), (5, 7, 64, torch.float32),
])
def test_write_kv_matches_reference(page: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    pool = _pool(6, 3, page, kv_heads, head_dim, dtype, seed=0)
    expected = pool.clone()
    gen = torch.Generator().manual_seed(1)
    slots = torch.randperm(6 * page, generator=gen)[:11]
    slots[4] = -1  # a padding token is skipped
    k = torch.randn(11, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    v_full = torch.randn(11, 2 * kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    v = v_full[:, kv_heads:]  # a strided input, as a slice of a fused projection would be
    write_kv(pool[:, 1, 0], pool[:, 1, 1], k, v, slots.to(DEVICE))
    write_kv_ref(expected[:, 1, 0], expected[:, 1, 1], k, v, slots.to(DEVICE))
    assert not torch.equal(pool, _pool(6, 3, page, kv_heads, head_dim, dtype, seed=0))  # something was written
    assert torch.equal(pool, expected)


@pytest.mark.parametrize("src, dst", [
    ([5, 7, 8, 9], [4, 5, 6, 7]),  # compaction: dst overlaps sources still to be read
    ([17, 20, 21], [16, 17, 18]),  # across a block boundary
    ([3, 40, 12], [30, 1, 44]),  # disjoint, unordered
])
def test_copy_slots_matches_reference(src: list[int], dst: list[int]) -> None:
    pool = _pool(6, 3, 8, 2, 64, torch.float16, seed=2)
    expected = pool.clone()
    s, d = torch.tensor(src, device=DEVICE), torch.tensor(dst, device=DEVICE)
    copy_slots(pool, s, d)
    copy_slots_ref(expected, s, d)
    assert torch.equal(pool, expected)
    # the engine's reference backend gathers before it scatters: the same result in these cases
    torch_pool = _pool(6, 3, 8, 2, 64, torch.float16, seed=2)
    TorchAttentionBackend().copy_slots(torch_pool, s, d)
    assert torch.equal(pool, torch_pool)


def test_copy_slots_moves_every_layer_and_both_planes() -> None:
    pool = _pool(4, 2, 4, 1, 16, torch.float32, seed=3)
    before = pool.clone()
    copy_slots(pool, torch.tensor([9], device=DEVICE), torch.tensor([2], device=DEVICE))
    assert torch.equal(pool[0, :, :, 2], before[2, :, :, 1])  # slot 2 = block 0 offset 2 <- block 2 offset 1
    pool[0, :, :, 2] = before[0, :, :, 2]
    assert torch.equal(pool, before)  # nothing else changed


def test_write_kv_rejects_bad_shapes() -> None:
    pool = _pool(2, 1, 4, 2, 16, torch.float32, seed=4)
    k = torch.zeros(3, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="k/v must be"):
        write_kv(pool[:, 0, 0], pool[:, 0, 1], k[:, :1], k[:, :1], torch.zeros(3, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(pool[:, 0, 0], pool[:, 0, 1], k, k, torch.zeros(2, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="share strides"):
        write_kv(pool[:, 0, 0], pool[:, 0, 1].contiguous(), k, k, torch.zeros(3, dtype=torch.long, device=DEVICE))


def test_kernels_reject_tensors_on_another_device() -> None:
    """A host tensor handed to a CUDA kernel fails inside Triton with a message naming no argument
    (the lookahead compaction once passed host slot tensors on a GPU): the wrappers name it."""
    pool = _pool(4, 2, 4, 1, 16, torch.float32, seed=5)
    elsewhere = torch.tensor([9], device="meta")
    here = torch.tensor([2], device=DEVICE)
    with pytest.raises(ValueError, match="src is on meta"):
        copy_slots(pool, elsewhere, here)
    k = torch.zeros(1, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="slot_mapping is on meta"):
        write_kv(pool[:, 0, 0], pool[:, 0, 1], k, k, elsewhere)

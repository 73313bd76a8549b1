"""The C++ rotary embedding + K/V write (kernels/cpu_rope.cpp) against the torch ops it replaces
(engine.rope.apply_rotary_, then index_put_ into the paged cache), bit for bit, and through the CPU
attention backend."""
from __future__ import annotations

import pytest
import torch

from engine.attention.base import KVLayerCache, rope_then_write_kv
from engine.attention.cpu_backend import CpuAttentionBackend
from engine.batch import SeqInput, plan_batch
from engine.rope import RotaryEmbedding
from kernels import cpu_rope

pytestmark = pytest.mark.skipif(not cpu_rope.available(), reason="no C++ compiler")

BLOCK = 16


def _case(T: int, heads: int, kv_heads: int, head_dim: int, seed: int,
          dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    # [num_blocks, layers, 2, block, kv_heads, head_dim]: the engine's pool layout
    pool = torch.randn(12, 3, 2, BLOCK, kv_heads, head_dim, generator=gen).to(dtype)
    qkv = (torch.randn(T, heads + 2 * kv_heads, head_dim, generator=gen) * 4).to(dtype)
    rope = RotaryEmbedding(head_dim, 4096, 10000.0, None)
    positions = torch.randint(0, 4096, (T,), generator=gen)
    cos, sin = rope.lookup(positions, dtype)  # [T, 1, head_dim]
    slots = torch.randperm(12 * BLOCK, generator=gen)[:T]
    return pool, qkv, cos, sin, slots // BLOCK, slots % BLOCK


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16 if x.dtype is torch.bfloat16 else torch.int32)


DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])


@DTYPES
@pytest.mark.parametrize("T", [1, 3, 16, 48, 130])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (14, 2, 128), (4, 4, 32), (2, 1, 6)])
def test_matches_the_torch_ops_bit_for_bit(T: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    pool, qkv, cos, sin, block, offset = _case(T, heads, kv_heads, head_dim, seed=T * 100 + head_dim, dtype=dtype)
    ref_pool, ref_qkv = pool.clone(), qkv.clone()
    cpu_rope.rope_write_kv(qkv, cos, sin, pool[:, 1, 0], pool[:, 1, 1], block, offset, heads)
    cpu_rope.rope_write_kv_ref(ref_qkv, cos, sin, ref_pool[:, 1, 0], ref_pool[:, 1, 1], block, offset, heads)
    assert torch.equal(_bits(qkv), _bits(ref_qkv))
    assert torch.equal(_bits(pool), _bits(ref_pool))  # other layers and slots untouched
    # and it did something: the k heads moved, the slots hold them
    assert torch.equal(pool[block, 1, 0, offset], qkv[:, heads:heads + kv_heads])
    assert torch.equal(pool[block, 1, 1, offset], qkv[:, heads + kv_heads:])


@DTYPES
def test_special_values_round_as_torch(dtype: torch.dtype) -> None:
    pool, qkv, cos, sin, block, offset = _case(5, 3, 1, 64, seed=7, dtype=dtype)
    flat = qkv.view(-1)
    flat[::7] = float("inf")
    flat[3::11] = float("nan")
    flat[5::13] = -0.0
    flat[1::17] = 3.0e38  # products overflow to inf
    flat[2::19] = 1e-40  # subnormal in bf16 and fp32
    ref_pool, ref_qkv = pool.clone(), qkv.clone()
    cpu_rope.rope_write_kv(qkv, cos, sin, pool[:, 0, 0], pool[:, 0, 1], block, offset, 3)
    cpu_rope.rope_write_kv_ref(ref_qkv, cos, sin, ref_pool[:, 0, 0], ref_pool[:, 0, 1], block, offset, 3)
    for got, want in ((qkv, ref_qkv), (pool, ref_pool)):  # NaN where torch has NaN (its bits aside), else equal bits
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(_bits(got[~nan]), _bits(want[~nan]))
    assert qkv.isnan().any() and qkv.isinf().any()


def test_bad_tables_are_refused() -> None:
    pool, qkv, cos, sin, block, offset = _case(4, 3, 1, 64, seed=3)
    with pytest.raises(ValueError, match="cos and signed_sin"):
        cpu_rope.rope_write_kv(qkv, cos[:3], sin[:3], pool[:, 0, 0], pool[:, 0, 1], block, offset, 3)
    with pytest.raises(ValueError, match="write_block"):
        cpu_rope.rope_write_kv(qkv, cos, sin, pool[:, 0, 0], pool[:, 0, 1], block.int(), offset, 3)
    with pytest.raises(ValueError, match="does not match"):
        cpu_rope.check_layout(qkv, pool[:, 0, 0], pool[:, 0, 1], 2)
    with pytest.raises(ValueError, match="cos and signed_sin must be"):
        cpu_rope.rope_write_kv(qkv, cos.float(), sin.float(), pool[:, 0, 0], pool[:, 0, 1], block, offset, 3)
    assert cpu_rope.supports(qkv.float(), pool[:, 0, 0].float())
    assert not cpu_rope.supports(qkv.float(), pool[:, 0, 0])  # a cache of another dtype keeps the torch ops
    assert not cpu_rope.supports(qkv.half(), pool[:, 0, 0].half())


def _hf_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``x * cos + rotate_half(x) * sin``, written out (not engine.rope's roll)."""
    half = x.shape[-1] // 2
    sin = torch.cat([-signed_sin[..., :half], signed_sin[..., half:]], dim=-1)
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_cpu_backend_equals_the_torch_path(dtype: torch.dtype) -> None:
    """Through CpuAttentionBackend.rope_write_kv (the kernel in bf16 and fp32): q and
    the cached k are transformers' rotary embedding, v is stored as it came, and q, the cache and
    the attention output equal the torch ops' path."""
    heads, kv_heads, head_dim = 9, 3, 64
    pool, qkv, cos, sin, _, _ = _case(6, heads, kv_heads, head_dim, seed=11)
    pool, qkv, cos, sin = pool.to(dtype), qkv.to(dtype), cos.to(dtype), sin.to(dtype)
    # two sequences: one decoding behind 20 cached tokens, one verifying a chain of 5 behind 9
    inputs = [SeqInput([1], 20, [0, 1]), SeqInput([1, 2, 3, 4, 5], 9, [2])]
    meta = plan_batch(inputs, BLOCK, "cpu").attn
    backend = CpuAttentionBackend()
    plan = backend.plan(meta)
    ref_pool, ref_qkv, before = pool.clone(), qkv.clone(), qkv.clone()
    q = backend.rope_write_kv(qkv, cos, sin, KVLayerCache(pool[:, 2, 0], pool[:, 2, 1]), plan, heads)
    assert list(backend._rope_kernel.values()) == [True]  # the kernel took it
    slots = meta.slot_mapping
    assert torch.equal(q, _hf_rope(before[:, :heads], cos, sin))
    assert torch.equal(pool[slots // BLOCK, 2, 0, slots % BLOCK], _hf_rope(before[:, heads:heads + kv_heads], cos, sin))
    assert torch.equal(pool[slots // BLOCK, 2, 1, slots % BLOCK], before[:, heads + kv_heads:])
    ref_q = rope_then_write_kv(backend, ref_qkv, cos, sin, KVLayerCache(ref_pool[:, 2, 0], ref_pool[:, 2, 1]), plan,
                               heads)
    assert torch.equal(q, ref_q) and torch.equal(pool, ref_pool)
    out = backend.attend(q, KVLayerCache(pool[:, 2, 0], pool[:, 2, 1]), plan, head_dim**-0.5)
    ref = backend.attend(ref_q, KVLayerCache(ref_pool[:, 2, 0], ref_pool[:, 2, 1]), plan, head_dim**-0.5)
    assert torch.equal(out, ref)

"""The C++ SwiGLU activation (kernels/cpu_silu_mul.cpp) against torch's ``F.silu(gate) * up``, bit
for bit: every 16-bit gate value (the table's whole domain) against several ups, row lengths past
the 8-lane loop's tail, many rows (threads), and the engine's MLP taking it."""
from __future__ import annotations

import pytest
import torch

from engine.layers import silu_and_mul as engine_silu_and_mul
from kernels import cpu_silu_mul
from kernels.cpu_silu_mul import silu_and_mul, silu_and_mul_ref, silu_table

pytestmark = pytest.mark.skipif(not cpu_silu_mul.available(), reason="no C++ compiler")
DTYPES = [torch.bfloat16, torch.float16]


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: the same bits, or both NaN (a NaN's payload is not part of the contract)."""
    return (a.view(torch.int16) == b.view(torch.int16)) | (torch.isnan(a) & torch.isnan(b))


def _every(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_gate_value(dtype: torch.dtype) -> None:
    """All 65,536 gate bit patterns (NaNs, infinities, subnormals, both zeros) against ups that are
    themselves every pattern (two orders) and random values: products that overflow, underflow,
    round at ties, or multiply NaN and inf."""
    gate = _every(dtype)
    gen = torch.Generator().manual_seed(0)
    for up in (gate, gate.flip(0), (torch.randn(1 << 16, generator=gen) * 4).to(dtype)):
        gate_up = torch.cat([gate, up]).view(1, -1)
        got, ref = silu_and_mul(gate_up), silu_and_mul_ref(gate_up)
        assert got.shape == ref.shape == (1, 1 << 16) and got.dtype == dtype
        bad = (~_same(got, ref)).nonzero()
        assert len(bad) == 0, f"{len(bad)} elements differ, first at {bad[0].tolist()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "I"), [(1, 1), (1, 7), (3, 9), (16, 1536), (2, 4864), (64, 1536), (5, 13)])
def test_matches_torch_rows(dtype: torch.dtype, T: int, I: int) -> None:
    """Rows of any length (the 8-lane loop and its scalar tail), one row or enough to split over
    the threads; the engine's entry point gives the same."""
    gen = torch.Generator().manual_seed(T * 100 + I)
    gate_up = (torch.randn(T, 2 * I, generator=gen) * 3).to(dtype)
    ref = silu_and_mul_ref(gate_up)
    assert _same(silu_and_mul(gate_up), ref).all()
    assert _same(engine_silu_and_mul(gate_up), ref).all()


def test_rows_are_invariant() -> None:
    """A row's bits alone equal its bits among 40 (elementwise, whatever the thread split)."""
    gate_up = torch.randn(40, 2 * 1536, generator=torch.Generator().manual_seed(1)).bfloat16()
    alone = torch.cat([silu_and_mul(gate_up[i:i + 1]) for i in range(40)])
    assert torch.equal(silu_and_mul(gate_up).view(torch.int16), alone.view(torch.int16))


def test_table_and_checks() -> None:
    table = silu_table(torch.bfloat16)
    assert table.shape == (1 << 16,)
    assert torch.equal(table.view(torch.int16), torch.nn.functional.silu(_every(torch.bfloat16)).view(torch.int16))
    with pytest.raises(ValueError, match="16-bit"):
        silu_table(torch.float32)
    with pytest.raises(ValueError, match="bf16 / fp16"):
        silu_and_mul(torch.zeros(2, 6))  # fp32
    with pytest.raises(ValueError, match="bf16 / fp16"):
        silu_and_mul(torch.zeros(2, 5, dtype=torch.bfloat16))  # odd width
    with pytest.raises(ValueError, match="bf16 / fp16"):
        silu_and_mul(torch.zeros(6, 2, dtype=torch.bfloat16).t())  # not contiguous
    assert silu_and_mul(torch.zeros(0, 6, dtype=torch.bfloat16)).shape == (0, 3)


def test_engine_keeps_torch_for_fp32() -> None:
    """fp32 (the bundled model's own dtype, checked against transformers) stays torch's ops."""
    gate_up = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(engine_silu_and_mul(gate_up), silu_and_mul_ref(gate_up))

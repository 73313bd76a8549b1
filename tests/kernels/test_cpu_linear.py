"""The C++ bf16 product kernel (kernels/cpu_linear.cpp) against its torch reference, over
parametrized shapes: agreement to bf16 rounding, row invariance bit for bit, the fused residual
add and the rounding itself bit for bit against torch.

Both paths of the kernel run every test here: AMX tiles (where the CPU has them) and the vector
path (forced with ``pack(w, amx=False)`` where AMX is the default), which is VDPBF16PS on a CPU
with AVX512-BF16 and FMA on 8 fp32 lanes on one with AVX2 only. The kernel needs one of them; on a
CPU with neither the engine keeps torch's products and these tests are skipped. The real model runs through it in tests/engine/test_batch_invariance.py (bf16
lookahead on = off = alone) and every bf16 engine test.
"""
from __future__ import annotations

import pytest
import torch

from kernels import cpu_linear
from kernels.cpu_linear import linear, linear_ref, pack

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="the CPU has neither AVX512-BF16 nor AVX2 (or no C++ compiler)")

# (out, in): panels cut short (1, 31, 33, 100), SmolLM2's products, an untied-head-like width
SHAPES = [(1, 2), (31, 64), (33, 576), (100, 34), (960, 576), (576, 1536), (4864, 896)]
# tiles of 6 tokens (AVX2: 2-3 on whole panels, 4-6 on halves), 14 (VDPBF16PS) and 16 in pairs
# (AMX): below, at and past their edges
TOKENS = [1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17, 29, 33, 40]
AMX_ONLY = pytest.mark.skipif(not cpu_linear.amx_available(), reason="no AMX on this CPU")
PATHS = [pytest.param(False, id="vector"), pytest.param(True, id="amx", marks=AMX_ONLY)]


def _shapes_and_paths(shapes: list[tuple[int, int]]) -> list:
    """(shape, amx): the vector path for every shape, AMX for those it takes (inputs a multiple
    of 32; the others take the vector path in the engine too)."""
    out = []
    for o, i in shapes:
        out.append(pytest.param((o, i), False, id=f"{o}x{i}-vector"))
        if i % cpu_linear.AMX_K == 0:
            out.append(pytest.param((o, i), True, id=f"{o}x{i}-amx", marks=AMX_ONLY))
    return out


def _data(out_f: int, in_f: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_f, in_f, generator=gen) * 0.05).bfloat16()
    x = torch.randn(T, in_f, generator=gen).bfloat16()
    return w, x


@pytest.mark.parametrize(("shape", "amx"), _shapes_and_paths(SHAPES))
@pytest.mark.parametrize("T", TOKENS)
def test_matches_reference(shape: tuple[int, int], T: int, amx: bool) -> None:
    """Within one bf16 rounding of the fp32 reference (the sums run in another order), and equal
    to it on most elements."""
    w, x = _data(*shape, T, seed=T + shape[0])
    y, ref = linear(x, pack(w, amx=amx)), linear_ref(x, w)
    assert y.shape == ref.shape == (T, shape[0]) and y.dtype == torch.bfloat16
    exact = (x.double() @ w.double().t())
    # one bf16 ulp of the exact value, plus what fp32 sums of `in` terms may lose
    tol = exact.abs() * 2.0**-7 + (x.double().abs() @ w.double().abs().t()) * shape[1] * 2.0**-24
    assert ((y.double() - exact).abs() <= tol).all()
    assert (y == ref).float().mean() > 0.9


@pytest.mark.parametrize("amx", PATHS)
@pytest.mark.parametrize("shape", [(33, 576), (960, 576), (576, 1536)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_rows_are_invariant(shape: tuple[int, int], amx: bool) -> None:
    """A token's output has the same bits alone, in any tile position and at any step width."""
    w, x = _data(*shape, 40, seed=1)
    p = pack(w, amx=amx)
    alone = torch.cat([linear(x[i:i + 1], p) for i in range(40)])
    for t in range(1, 41):
        assert torch.equal(linear(x[:t], p), alone[:t]), f"T={t}"
    assert torch.equal(linear(x[7:30], p), alone[7:30])  # other tile offsets


@pytest.mark.parametrize("amx", PATHS)
@pytest.mark.parametrize("T", [1, 13, 17])
def test_residual_add_is_torchs(T: int, amx: bool) -> None:
    """residual= adds the rounded product into the residual in place, bit for bit as torch's bf16
    ``residual + product`` does (fp32 sum, rounded to nearest even)."""
    w, x = _data(576, 1536, T, seed=3)
    p = pack(w, amx=amx)
    res = torch.randn(T, 576, generator=torch.Generator().manual_seed(4)).bfloat16()
    expected = res + linear(x, p)
    out = linear(x, p, residual=res)
    assert out.data_ptr() == res.data_ptr() and torch.equal(res, expected)


@pytest.mark.parametrize("amx", PATHS)
def test_rounds_to_nearest_even_as_torch(amx: bool) -> None:
    """fp32 sums that bf16 cannot hold (ties included) round as ``.to(torch.bfloat16)`` does. The
    sums of two bf16 values in [1, 4) are exact in fp32, so this checks the rounding alone."""
    gen = torch.Generator().manual_seed(5)
    w = torch.zeros(4096, 32, dtype=torch.bfloat16)  # 32 inputs (an AMX tile row), two nonzero
    w[:, :2] = (1 + 3 * torch.rand(4096, 2, generator=gen)).bfloat16()
    w[:64, 1] = 2.0**-8  # 1 + 2^-8 ... : exact ties
    w[:64, 0] = torch.arange(64) * 2.0**-7 + 1
    x = torch.ones(1, 32, dtype=torch.bfloat16)
    expected = (w.float()[:, 0] + w.float()[:, 1]).to(torch.bfloat16)
    assert torch.equal(linear(x, pack(w, amx=amx))[0], expected)


def test_pack_round_trips_and_checks_inputs() -> None:
    w, x = _data(45, 8, 3, seed=6)
    p = pack(w)
    assert not p.amx  # 8 inputs: not a multiple of an AMX tile row
    assert pack(torch.zeros(4, 64, dtype=torch.bfloat16)).amx == cpu_linear.amx_available()
    with pytest.raises(ValueError, match="multiple of 32"):
        pack(w, amx=True)
    assert p.shape == (45, 8) and p.data.shape == (2, 4, 32, 2)
    assert torch.equal(p.unpack(), w)
    with pytest.raises(ValueError, match="odd"):
        pack(torch.zeros(4, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bf16"):
        pack(w.float())
    with pytest.raises(ValueError, match=r"\[T, 8\] bf16"):
        linear(x.float(), p)
    with pytest.raises(ValueError, match="residual"):
        linear(x, p, residual=torch.zeros(3, 44, dtype=torch.bfloat16))
    assert linear(x[:0], p).shape == (0, 45)
    # a strided input (a view of every other column pair) is made contiguous first
    wide = torch.randn(3, 16).bfloat16()
    assert torch.equal(linear(wide[:, ::2], p), linear(wide[:, ::2].contiguous(), p))


@pytest.mark.parametrize(("shape", "amx"), _shapes_and_paths([(33, 576), (960, 576), (100, 34)]))
@pytest.mark.parametrize("T", [1, 15, 33])
def test_fused_norm(shape: tuple[int, int], T: int, amx: bool) -> None:
    """norm= gives the product of HF's RMSNorm of the rows: within one bf16 rounding of the
    reference on the normalized inputs, mostly equal, and row-invariant."""
    out_f, in_f = shape
    w, x = _data(out_f, in_f, T, seed=8)
    x = x * 3 + 1  # rows whose scale the norm changes
    norm_w = (1 + 0.1 * torch.randn(in_f, generator=torch.Generator().manual_seed(9))).bfloat16()
    p = pack(w, amx=amx)
    y = linear(x, p, norm=(norm_w, 1e-5))
    ref = linear_ref(x, w, norm=(norm_w, 1e-5))
    xn = norm_w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    exact = xn.double() @ w.double().t()
    # the normalized row itself may differ in a rare element by one rounding: 2 ulps of slack
    tol = exact.abs() * 2.0**-6 + (xn.double().abs() @ w.double().abs().t()) * 2.0**-8
    assert ((y.double() - exact).abs() <= tol).all()
    assert (y == ref).float().mean() > 0.9
    alone = torch.cat([linear(x[i:i + 1], p, norm=(norm_w, 1e-5)) for i in range(T)])
    assert torch.equal(y, alone)
    with pytest.raises(ValueError, match="norm weight"):
        linear(x, p, norm=(norm_w[:-2], 1e-5))

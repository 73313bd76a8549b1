"""fp32 products' layout by row count (engine.fp32_products): W @ X and Grove's fp32 kernel give
F.linear's values, the choice follows the timed buckets, and a machine's timing is kept and read back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.fp32_products as fp
from engine import layers
from engine.layers import linear, linear_residual
from kernels import cpu_linear_fp32


@pytest.mark.parametrize("t", [1, 2, 3, 17, 128])
def test_w_at_x_gives_f_linears_values(t: int) -> None:
    g = torch.Generator().manual_seed(t)
    w, x = torch.randn(96, 64, generator=g), torch.randn(t, 64, generator=g)
    out = fp.product(w, x)
    torch.testing.assert_close(out, F.linear(x, w))
    assert out.is_contiguous()  # as F.linear's: views of its rows (q/k/v, logits) and the kernels need it


def test_linear_takes_the_layout_timed_for_its_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(96, 64)
    L, WX, K = fp.LINEAR, fp.WX, fp.KERNEL
    # W @ X timed fastest at 1 and 65-128 rows, the kernel at 3-4 and 9-16, F.linear elsewhere
    monkeypatch.setattr(fp, "_CHOICE", {(torch.get_num_threads(), 96, 64): (WX, L, K, L, K, L, L, WX)})
    assert [t for t in range(0, 200) if fp.choice(torch.zeros(t, 64), w) == WX] == [1, *range(65, 129)]
    assert [t for t in range(0, 200) if fp.choice(torch.zeros(t, 64), w) == K] == [3, 4, *range(9, 17)]
    assert fp.choice(torch.zeros(1, 64, dtype=torch.bfloat16), w) == L  # 16 bits: engine.layers' own rules
    assert fp.choice(torch.zeros(1, 64), torch.randn(96, 32)) == L  # a shape never timed
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(fp, "product", lambda weight, x: calls.append(("wx", x.shape[0])) or torch.mm(weight, x.t()).t())
    kernel = cpu_linear_fp32.linear
    monkeypatch.setattr(cpu_linear_fp32, "linear", lambda x, weight, residual=None: calls.append(("kernel", x.shape[0]))
                        or kernel(x, weight, residual=residual))
    x, bias = torch.randn(12, 64), torch.randn(96)
    for t in (1, 2, 3, 12):
        torch.testing.assert_close(linear(x[:t], w), F.linear(x[:t], w))
        torch.testing.assert_close(linear(x[:t], w, bias), F.linear(x[:t], w, bias))
        res = torch.ones(t, 96)
        torch.testing.assert_close(linear_residual(x[:t], w, res.clone()), res + F.linear(x[:t], w))
    assert calls == [("wx", 1)] * 3 + [("kernel", 3)] * 3 + [("kernel", 12)] * 3


@pytest.mark.parametrize("shape", [(960, 576), (576, 1536), (24, 8), (31, 16), (7, 40)], ids=str)
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 7, 8, 16, 25])  # every tile shape of either build, with tails
def test_the_fp32_kernel_gives_f_linears_values(shape: tuple[int, int], t: int) -> None:
    if not cpu_linear_fp32.available():
        pytest.skip("no AVX2 with FMA here: the fp32 kernel is never timed")
    g = torch.Generator().manual_seed(t)
    w, x = torch.randn(*shape, generator=g), torch.randn(t + 1, shape[1], generator=g)[1:]  # rows at an offset
    out = cpu_linear_fp32.linear(x, w)
    torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-4)
    res = torch.randn(t, shape[0], generator=g)
    assert cpu_linear_fp32.linear(x, w, residual=res.clone()).sub(res).sub(out).abs().max() < 1e-4
    # a row's sums do not depend on the rows beside it (the tiles' order is fixed)
    assert all(torch.equal(out[i:i + 1], cpu_linear_fp32.linear(x[i:i + 1], w)) for i in range(t))
    strided = torch.randn(t, 2 * shape[1], generator=g)[:, ::2]  # a row stride of its own, columns not contiguous
    torch.testing.assert_close(cpu_linear_fp32.linear(strided, w), F.linear(strided, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("t", [1, 2, 5])
def test_the_fp32_kernel_fuses_the_norm_before_it(t: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_linear_fp32.available():
        pytest.skip("no AVX2 with FMA here")
    g = torch.Generator().manual_seed(t)
    w, x, norm_w = torch.randn(960, 576, generator=g), torch.randn(t, 576, generator=g) * 3, torch.rand(576, generator=g)
    out = cpu_linear_fp32.linear(x, w, norm=(norm_w, 1e-5))
    torch.testing.assert_close(out, cpu_linear_fp32.linear_ref(x, w, norm=(norm_w, 1e-5)), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(out, F.linear(x, w), atol=1e-2)  # the norm did something
    # and through engine.layers.norm_linear where the timing chose the kernel (its own norm otherwise)
    key = (torch.get_num_threads(), 960, 576)
    monkeypatch.setitem(fp._CHOICE, key, (fp.KERNEL,) * len(fp.BUCKETS))
    bias = torch.randn(960, generator=g)
    torch.testing.assert_close(layers.norm_linear(x, norm_w, 1e-5, w, bias), out + bias, rtol=0, atol=0)
    monkeypatch.setitem(fp._CHOICE, key, (fp.LINEAR,) * len(fp.BUCKETS))
    torch.testing.assert_close(layers.norm_linear(x, norm_w, 1e-5, w), out, rtol=1e-5, atol=1e-4)


def test_the_fp32_kernel_refuses_what_it_cannot_take() -> None:
    if not cpu_linear_fp32.available():
        pytest.skip("no AVX2 with FMA here")
    with pytest.raises(ValueError, match="multiple of 8"):
        cpu_linear_fp32.linear(torch.zeros(1, 12), torch.zeros(4, 12))
    with pytest.raises(ValueError, match="fp32"):
        cpu_linear_fp32.linear(torch.zeros(1, 16, dtype=torch.bfloat16), torch.zeros(4, 16))
    with pytest.raises(ValueError, match="residual"):
        cpu_linear_fp32.linear(torch.zeros(2, 16), torch.zeros(4, 16), residual=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="norm weight"):
        cpu_linear_fp32.linear(torch.zeros(2, 16), torch.zeros(4, 16), norm=(torch.zeros(8), 1e-5))


def test_a_timing_is_kept_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fp, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(fp, "_CHOICE", {})
    kinds = [[torch.randn(48, 32), torch.randn(48, 32)], [torch.randn(48, 32, dtype=torch.bfloat16)]]
    first = fp.tune(kinds)
    assert list(first) == [(48, 32)] and len(first[(48, 32)]) == len(fp.BUCKETS)  # bf16 is not timed
    assert len(list((tmp_path / "fp32-products").glob("*.json"))) == 1
    monkeypatch.setattr(fp, "_CHOICE", {})  # a new process
    monkeypatch.setattr(fp, "_time", lambda ws: pytest.fail("timed again"))
    assert fp.tune(kinds) == first
    # another build of the fp32 kernel (its source changed) times them again
    monkeypatch.setattr(fp, "_CHOICE", {})
    monkeypatch.setattr(cpu_linear_fp32, "available", lambda: True)  # where the key names the build
    monkeypatch.setattr(fp.cpu_build, "library_path", lambda source: Path(f"grove_{source.stem}-x86_64-another.so"))
    with pytest.raises(pytest.fail.Exception, match="timed again"):
        fp.tune(kinds)


def test_a_machine_without_the_kernel_keeps_its_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # no AVX2, no compiler, or an install without the C++ source: the key has no kernel build
    monkeypatch.setattr(fp, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(fp, "_CHOICE", {})
    monkeypatch.setattr(cpu_linear_fp32, "available", lambda: False)
    monkeypatch.setattr(cpu_linear_fp32, "SOURCE", tmp_path / "absent.cpp")
    monkeypatch.setattr(fp, "_time", lambda ws: (fp.LINEAR,) * len(fp.BUCKETS))
    assert fp.tune([[torch.randn(48, 32)]]) == {(48, 32): (fp.LINEAR,) * len(fp.BUCKETS)}
    assert len(list((tmp_path / "fp32-products").glob("*.json"))) == 1

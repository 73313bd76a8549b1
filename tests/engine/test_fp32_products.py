"""fp32 products' layout by row count (engine.fp32_products): W @ X gives F.linear's values, the
choice follows the timed buckets, and a machine's timing is kept and read back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.fp32_products as fp
from engine.layers import linear, linear_residual


@pytest.mark.parametrize("t", [1, 2, 3, 17, 128])
def test_w_at_x_gives_f_linears_values(t: int) -> None:
    g = torch.Generator().manual_seed(t)
    w, x = torch.randn(96, 64, generator=g), torch.randn(t, 64, generator=g)
    out = fp.product(w, x)
    torch.testing.assert_close(out, F.linear(x, w))
    assert out.is_contiguous()  # as F.linear's: views of its rows (q/k/v, logits) and the kernels need it


def test_linear_takes_the_layout_timed_for_its_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(96, 64)
    # W @ X timed faster at 1, 3-4 and 65-128 rows (buckets 1, 4, 128), F.linear elsewhere
    monkeypatch.setattr(fp, "_BY_WX", {(torch.get_num_threads(), 96, 64): (True, False, True, False, False, False,
                                                                           False, True)})
    taken = [t for t in range(0, 200) if fp.by_wx(torch.zeros(t, 64), w)]
    assert taken == [1, 3, 4, *range(65, 129)]
    assert not fp.by_wx(torch.zeros(1, 64, dtype=torch.bfloat16), w)  # 16 bits: engine.layers' own rules
    assert not fp.by_wx(torch.zeros(1, 64), torch.randn(96, 32))  # a shape never timed
    calls: list[int] = []
    monkeypatch.setattr(fp, "product", lambda weight, x: calls.append(x.shape[0]) or torch.mm(weight, x.t()).t())
    x = torch.randn(5, 64)
    for t in (1, 2, 4, 5):
        torch.testing.assert_close(linear(x[:t], w), F.linear(x[:t], w))
        res = torch.ones(t, 96)
        torch.testing.assert_close(linear_residual(x[:t], w, res.clone()), res + F.linear(x[:t], w))
    assert calls == [1, 1, 4, 4]


def test_a_timing_is_kept_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fp, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(fp, "_BY_WX", {})
    kinds = [[torch.randn(48, 32), torch.randn(48, 32)], [torch.randn(48, 32, dtype=torch.bfloat16)]]
    first = fp.tune(kinds)
    assert list(first) == [(48, 32)] and len(first[(48, 32)]) == len(fp.BUCKETS)  # bf16 is not timed
    assert len(list((tmp_path / "fp32-products").glob("*.json"))) == 1
    monkeypatch.setattr(fp, "_BY_WX", {})  # a new process
    monkeypatch.setattr(fp, "_time", lambda ws: pytest.fail("timed again"))
    assert fp.tune(kinds) == first

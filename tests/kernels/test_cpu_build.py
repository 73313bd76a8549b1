"""The CPU kernels build and report what they can do on CPUs other than this one: the same sources
compiled for a CPU without AMX (an AMD EPYC) and without AVX512-BF16 (where the engine falls back
to torch's products and the attention kernel's fp32 scores)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from kernels import cpu_attention, cpu_build, cpu_linear, cpu_linear_fp32, cpu_silu_mul

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")

NO_AMX = ["-mno-amx-tile", "-mno-amx-bf16", "-mno-amx-int8"]
NO_BF16 = [*NO_AMX, "-mno-avx512bf16"]
NO_AVX2 = [*NO_BF16, "-mno-avx2"]  # (GCC then drops AVX-512 too: it implies AVX2)


def _build(source: Path, extra: list[str], tmp_path: Path) -> ctypes.CDLL:
    """``source`` built with the engine's flags and ``extra``, at -O1: the same preprocessing (which
    path each feature set takes) and the same intrinsics' target checks as -O3, in a third of the
    time (the attention kernel: 4 s against 15 on an AVX2 EPYC)."""
    out = tmp_path / f"{source.stem}-{len(extra)}.so"
    flags = [f for f in cpu_build.FLAGS if not f.startswith("-O")] + ["-O1"]
    proc = subprocess.run(["g++", *flags, *extra, str(source), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ctypes.CDLL(str(out))


@pytest.mark.parametrize("extra", [NO_AMX, NO_BF16, NO_AVX2], ids=["no-amx", "no-avx512bf16", "no-avx2"])
def test_kernels_build_for_other_cpus(extra: list[str], tmp_path: Path) -> None:
    """The kernels build (and load, and say which path they took) with this CPU's features cut
    down: the products' path is VDPBF16PS (1) with AVX512-BF16, else FMA on 8 lanes (2) with AVX2
    and FMA, else none (0: torch's products); the fp32 products' kernel needs AVX2 and FMA; the
    attention's bf16 dot needs AVX512-BF16."""
    flags = cpu_build.cpu_flags().split()
    bf16 = "avx512_bf16" in flags and "-mno-avx512bf16" not in extra
    avx2 = "avx2" in flags and "fma" in flags and "-mno-avx2" not in extra
    linear = _build(cpu_linear.SOURCE, extra, tmp_path)
    assert linear.grove_linear_amx_supported() == 0
    assert linear.grove_linear_supported() == (1 if bf16 else 2 if avx2 else 0)
    assert linear.grove_linear_tile_tokens() == (14 if bf16 else 6 if avx2 else 0)
    assert _build(cpu_linear_fp32.SOURCE, extra, tmp_path).grove_linear_fp32_supported() == (1 if avx2 else 0)
    attention = _build(cpu_attention.SOURCE, extra, tmp_path)
    assert attention.grove_attention_bf16_dot() == (1 if bf16 else 0)


def test_load_aside_builds_another_source_and_leaves_the_module_as_it_was(tmp_path: Path, monkeypatch) -> None:
    """The A/B scripts' loader: another version of a kernel's source, built into the cache and typed
    by the module's own loader (a call gives the kernel's answer), while the module keeps its own."""
    import torch

    from kernels import cpu_greedy

    monkeypatch.setenv("GROVE_CACHE", str(tmp_path / "cache"))
    own = cpu_greedy._library()
    aside = tmp_path / "cpu_greedy.cpp"
    aside.write_text(cpu_greedy.SOURCE.read_text() + "\n// another version\n")
    lib = cpu_build.load_aside(cpu_greedy, aside)
    name = lambda lib: Path(lib._name).name  # noqa: E731  (the build's key; the cache root is this test's)
    assert name(lib) != name(own) and name(cpu_greedy._library()) == name(own) and cpu_greedy.SOURCE != aside
    assert cpu_build.library_path(aside).exists()
    x = torch.tensor([[0.5, 3.0, -1.0], [7.0, 7.0, 2.0]])
    out = torch.empty(2, dtype=torch.int64)
    assert lib.grove_argmax_rows(x.data_ptr(), 2, 3, 3, out.data_ptr(), 1) == 0
    assert out.tolist() == [1, 0]
    with pytest.raises(SystemExit):
        (tmp_path / "broken.cpp").write_text("not C++")
        cpu_build.load_aside(cpu_greedy, tmp_path / "broken.cpp")
    cpu_greedy._library.cache_clear()  # later tests load it from their own cache again


@pytest.mark.parametrize("extra", [NO_BF16, NO_AVX2], ids=["avx2", "no-avx2"])
def test_silu_mul_scalar_and_vector_builds_agree_with_torch(extra: list[str], tmp_path: Path) -> None:
    """The SwiGLU kernel built with its 8-lane loop (AVX2) and without it (the scalar loop for
    every element): both give torch's bits for every bf16 and fp16 gate value."""
    import torch

    from kernels.cpu_silu_mul import silu_and_mul_ref, silu_table

    lib = _build(cpu_silu_mul.SOURCE, extra, tmp_path)
    for dtype in (torch.bfloat16, torch.float16):
        gate = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
        up = (torch.randn(1 << 16, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
        gate_up = torch.cat([gate, up]).view(1, -1)
        out = torch.empty(1, 1 << 16, dtype=dtype)
        assert lib.grove_silu_and_mul(ctypes.c_void_p(gate_up.data_ptr()), ctypes.c_int64(1), ctypes.c_int64(1 << 16),
                                      ctypes.c_int64(1 << 17), ctypes.c_void_p(silu_table(dtype).data_ptr()),
                                      int(dtype == torch.float16), ctypes.c_void_p(out.data_ptr()), 1) == 0
        ref = silu_and_mul_ref(gate_up)
        same = (out.view(torch.int16) == ref.view(torch.int16)) | (torch.isnan(out) & torch.isnan(ref))
        assert same.all(), f"{dtype}: {int((~same).sum())} elements differ"

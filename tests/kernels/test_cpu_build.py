"""The CPU kernels build and report what they can do on CPUs other than this one: the same sources
compiled for a CPU without AMX (an AMD EPYC) and without AVX512-BF16 (where the engine falls back
to torch's products and the attention kernel's fp32 scores)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from kernels import cpu_attention, cpu_build, cpu_linear

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")

NO_AMX = ["-mno-amx-tile", "-mno-amx-bf16", "-mno-amx-int8"]
NO_BF16 = [*NO_AMX, "-mno-avx512bf16"]


def _build(source: Path, extra: list[str], tmp_path: Path) -> ctypes.CDLL:
    out = tmp_path / f"{source.stem}-{len(extra)}.so"
    proc = subprocess.run(["g++", *cpu_build.FLAGS, *extra, str(source), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ctypes.CDLL(str(out))


@pytest.mark.parametrize("extra", [NO_AMX, NO_BF16], ids=["no-amx", "no-avx512bf16"])
def test_kernels_build_for_other_cpus(extra: list[str], tmp_path: Path) -> None:
    linear = _build(cpu_linear.SOURCE, extra, tmp_path)
    assert linear.grove_linear_amx_supported() == 0
    assert linear.grove_linear_supported() == (0 if "-mno-avx512bf16" in extra else 1)
    attention = _build(cpu_attention.SOURCE, extra, tmp_path)
    assert attention.grove_attention_bf16_dot() == (0 if "-mno-avx512bf16" in extra else 1)

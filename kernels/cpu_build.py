"""Builds Grove's C++ CPU kernels (``cpu_attention.cpp``, ``cpu_linear.cpp``) with the system compiler.

Each library is compiled once for this machine (``-march=native``) into Grove's cache, keyed by its
source, the flags and the CPU's feature flags, and loaded with ctypes after torch, so its OpenMP
regions run in the pool torch already loaded.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from engine.paths import cache_dir

logger = logging.getLogger(__name__)

# No -ffast-math: the kernels' row invariance rests on the compiler keeping their summation order.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++20", "-fno-fast-math", "-ffp-contract=fast"]


def cpu_flags() -> str:
    """The CPU's feature flags (/proc/cpuinfo), which decide what -march=native compiles for."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(source: Path) -> Path:
    """Where ``source``'s library lives: one per source (and the headers beside it), compiler flags and CPU."""
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))  # what the sources include
    key = hashlib.sha256(source.read_bytes() + headers + " ".join(FLAGS).encode() + cpu_flags().encode()).hexdigest()[:16]
    return cache_dir() / "build" / f"grove_{source.stem}-{platform.machine()}-{key}.so"


def build(source: Path) -> Path:
    """Compiles ``source`` if its library is not built yet; raises RuntimeError with the compiler's output."""
    path = library_path(source)
    if path.exists():
        return path
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # build aside, then rename: atomic
        out = Path(tmp) / path.name
        proc = subprocess.run([cxx, *FLAGS, str(source), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build {source.name}:\n{proc.stderr[-2000:]}")
        os.replace(out, path)
    logger.info("built %s", path)
    return path


def load(source: Path, fallback: str) -> ctypes.CDLL | None:
    """``source``'s library, built if needed and loaded after torch (so it binds to the libgomp
    torch loaded); None, with a warning naming ``fallback`` (what the engine does instead), when it
    cannot be built or loaded."""
    try:
        return ctypes.CDLL(str(build(source)))
    except (RuntimeError, OSError) as exc:
        logger.warning("%s unavailable, %s: %s", source.name, fallback, exc)
        return None


# ctypes argument types of the kernels' entry points: pointers, sizes, and ints (thread counts, flags)
PTR, I64, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def load_functions(source: Path, fallback: str, signatures: dict[str, list[Any]]) -> ctypes.CDLL | None:
    """``load``, then each named entry point typed: its argument types as given, an int returned
    (every kernel returns 0 or an error code)."""
    lib = load(source, fallback)
    if lib is not None:
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
    return lib


def load_aside(module: ModuleType, source: Path) -> ctypes.CDLL:
    """``source`` (another version of a kernel module's C++ source) built and loaded by that module's
    own loader (``module._library``, entry points typed there), for A/B scripts that time two builds
    in one process; the module's own library is left as it was. SystemExit if it does not build."""
    saved = module.SOURCE
    module.SOURCE = source
    module._library.cache_clear()
    try:
        lib = module._library()
    finally:
        module.SOURCE = saved
        module._library.cache_clear()
    if lib is None:
        raise SystemExit(f"{source} did not build (see the log)")
    return lib


def product_operands(T: int, out: int, inp: int, dtype: torch.dtype, residual: torch.Tensor | None,
                     norm: tuple[torch.Tensor, float] | None) -> tuple[torch.Tensor, int | None, float]:
    """The output and the fused norm of a product kernel's call (cpu_linear, cpu_linear_fp32): a new
    [T, out] tensor, or ``residual`` checked to be that (contiguous, ``dtype``) to add into; the
    norm weight checked to be a contiguous [inp] ``dtype`` tensor. Returns (y, norm pointer or
    None, eps); ValueError naming the operand otherwise."""
    if residual is None:
        y = torch.empty(T, out, dtype=dtype)
    else:
        if residual.dtype is not dtype or residual.shape != (T, out) or not residual.is_contiguous():
            raise ValueError(f"residual must be a contiguous [{T}, {out}] {dtype} tensor, "
                             f"got {tuple(residual.shape)} {residual.dtype}")
        y = residual
    if norm is None:
        return y, None, 0.0
    norm_w, eps = norm
    if norm_w.dtype is not dtype or norm_w.shape != (inp,) or not norm_w.is_contiguous():
        raise ValueError(f"the norm weight must be a contiguous [{inp}] {dtype} tensor, got {tuple(norm_w.shape)} {norm_w.dtype}")
    return y, norm_w.data_ptr(), eps

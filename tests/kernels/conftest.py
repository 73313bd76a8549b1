"""Kernel tests: Triton's interpreter on CPU, real kernels where CUDA is present.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is defined, so it is set here,
before the test modules of this directory import ``kernels``. It is set only when there is no CUDA
device: on CPU the interpreter is the only way Triton kernels run at all, so nothing else in the
test session can be hurt by it; with CUDA the kernels are tested compiled.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _rowwise_interpreter_dot() -> None:
    """The interpreter computes ``tl.dot`` with one ``np.matmul`` of the two tiles. For fp32 that is
    BLAS's sgemm, whose arithmetic may depend on a row's place in the tile: on an AVX2-only AMD EPYC
    (Zen 1) numpy's OpenBLAS gave row 35 of a 64-row tile other bits than the same row at place 0,
    where a GPU's MMA computes every place alike (on an AVX512 Zen 4 the two agreed). So fp32 tiles
    are multiplied a row at a time, each row the same BLAS call whatever its place and its tile
    mates: the emulation then has the GPU's property that the row-invariance tests check."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001, ANN202
        if a.data.dtype != np.float32 or b.data.dtype != np.float32 or a.data.ndim != 2:
            return original(self, a, b, d, input_precision, max_num_imprecise_acc)
        rows = np.matmul(a.data[:, None, :], b.data, dtype=d.data.dtype)[:, 0, :]  # [M, 1, K] x [K, N]
        return interpreter.TensorHandle(rows + d.data, d.dtype.scalar)

    builder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _rowwise_interpreter_dot()

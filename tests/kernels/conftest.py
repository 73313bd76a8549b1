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

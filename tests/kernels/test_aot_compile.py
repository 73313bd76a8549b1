"""The row-invariant kernels compile for Hopper (sm_90) here, without a GPU, and every 16-bit
call of each runs one matrix instruction: the products' 64-row tiles on ``wgmma``; the decode
attention's one-token 16-row tiles on ``mma.sync``, split or not (a tree's node and a plain decode
run the same compiled kernel on the same data)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_invariant_kernels_compile_for_hopper() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the conftest sets it
    code = "import json; from kernels.aot_check import check; print(json.dumps(check(90)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"matmul": "wgmma", "rms_norm": "none", "decode": "mma.sync", "decode+split": "mma.sync"}

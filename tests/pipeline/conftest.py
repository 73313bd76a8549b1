"""A real stack (kvstore, 2 prefill, 2 decode, gateway) started as processes on loopback ports."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from launcher.stack import Stack, StackConfig


@pytest.fixture(scope="package")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack")
    # (profiles go to the log dir when a test asks for them: tests/pipeline/test_profiling.py)
    config = StackConfig(model=str(model_dir), num_prefill=2, num_decode=2, worker_kv_gb=0.25, log_dir=str(logs),
                         threads_per_worker=1,
                         extra_worker_args=("--log-stats-interval", "1", "--profiler-dir", str(logs / "profiles")))
    with Stack(config) as s:
        yield s

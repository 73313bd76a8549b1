"""A real stack (kvstore, 2 prefill, 2 decode, gateway) started as processes on loopback ports."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from launcher.stack import Stack, StackConfig


@pytest.fixture(scope="package")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(model=str(model_dir), num_prefill=2, num_decode=2, worker_kv_gb=0.25,
                         log_dir=str(tmp_path_factory.mktemp("stack")), threads_per_worker=1,
                         extra_worker_args=("--log-stats-interval", "1"))
    with Stack(config) as s:
        yield s

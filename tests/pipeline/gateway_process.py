"""A gateway process of a test's own, with its own flags, in front of a stack's workers."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from launcher.stack import Stack, service_env

ROOT = Path(__file__).resolve().parents[2]


class Gateway:
    def __init__(self, stack: Stack, tmp: Path, *args: str) -> None:
        ready = tmp / "gateway.ready"
        self.log = tmp / "gateway.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *stack.gateway_args(), *args, "--ready-file", str(ready)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=service_env())
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.http_url = f"http://127.0.0.1:{info['http_port']}"
        self.grpc_address = f"127.0.0.1:{info['grpc_port']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

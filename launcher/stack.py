"""The local stack as processes: start in dependency order, wait until each serves, stop cleanly.

Every service binds port 0 (unless told otherwise) and writes its bound ports to a ready file,
so stacks never collide on ports; the tests start the same stack the ``make run`` launcher does.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from engine.config import ModelConfig
from engine.paths import default_model_dir

logger = logging.getLogger(__name__)

# libgomp's idle threads spin ~300,000 rounds after each parallel region before they sleep. The
# stack's workers share this machine's cores, so one worker's spinning threads take cycles from the
# other's compute: a prefill computed beside lookahead's wide decode steps took seconds, and TPOT of
# the requests it held back suffered (code-edit c=16, one prompt set, lookahead on / off 0.64-0.85x
# in three runs with the default). 10,000 rounds keep the spin inside a step's back-to-back regions
# and hand the cores over between steps: that prompt set 1.41x, off's tokens/s alike (AMD EPYC, 2
# cores, docs/performance-history.md, session 20). OMP_WAIT_POLICY=passive (no spin) also cured it but cost ~20% of
# plain decoding. A GOMP_SPINCOUNT already in the environment is kept.
GOMP_SPINCOUNT = "10000"


def service_env() -> dict[str, str]:
    """The environment a stack's service starts with: this one's, plus loopback for UCX, unbuffered
    output and libgomp's shorter spin (GOMP_SPINCOUNT), each unless already set."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("UCX_NET_DEVICES", "lo")
    env.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    return env


@dataclass(frozen=True, slots=True)
class StackConfig:
    model: str = ""
    num_prefill: int = 1
    num_decode: int = 1
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    nixl: bool = True
    kvstore_capacity: str = "1GiB"
    kvstore_snapshot: str = ""  # the kvstore's cache across restarts (its --snapshot); "": none
    worker_kv_gb: float = 0.5
    dtype: str = "auto"
    api_key: str = ""
    lease_ttl: float = 30.0
    extra_worker_args: tuple[str, ...] = ()
    extra_decode_args: tuple[str, ...] = ()
    extra_gateway_args: tuple[str, ...] = ()
    prefill_args: tuple[tuple[str, ...], ...] = ()  # more arguments of prefill-i, by i
    decode_kvstore: bool = True  # decode workers write what they generate to the kvstore
    log_dir: str = ""  # "" = a temp dir; logs go to files there
    threads_per_worker: int = 0
    metrics_names: str = ""  # every service's --metrics-names (runtime.metric_names); "": their default


@dataclass(slots=True)
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    ready_file: Path
    log: IO[bytes] | None
    info: dict[str, Any] = field(default_factory=dict)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.dir = Path(config.log_dir or tempfile.mkdtemp(prefix="grove-stack-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []
        self.model_dir = config.model or str(default_model_dir())

    # ---- processes --------------------------------------------------------------------------
    def _spawn(self, name: str, module: str, args: list[str]) -> Service:
        ready = self.dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log = open(self.dir / f"{name}.log", "ab")
        if self.config.metrics_names:
            args = [*args, "--metrics-names", self.config.metrics_names]
        proc = subprocess.Popen([sys.executable, "-m", module, *args, "--ready-file", str(ready)],
                                stdout=log, stderr=subprocess.STDOUT, env=service_env(), start_new_session=True)
        svc = Service(name, proc, ready, log)
        self.services.append(svc)
        return svc

    def _wait_ready(self, svcs: list[Service], timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        for svc in svcs:
            while not svc.ready_file.exists():
                if svc.proc.poll() is not None:
                    raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}; see {self.dir / svc.name}.log:\n"
                                       + self.tail(svc.name))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{svc.name} not ready after {timeout_s:.0f} s; see {self.dir / svc.name}.log")
                time.sleep(0.05)
            svc.info = json.loads(svc.ready_file.read_text())

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self) -> "Stack":
        c = self.config
        host = c.host
        kv = self.start_kvstore()
        common = ["--model", self.model_dir, "--dtype", c.dtype, "--kv-cache-gb", str(c.worker_kv_gb),
                  "--nixl", "on" if c.nixl else "off", *c.extra_worker_args]
        if c.threads_per_worker:
            common += ["--num-threads", str(c.threads_per_worker)]
        common += ["--metrics-port", "0"]
        workers = [self._spawn(f"prefill-{i}", "prefill_worker", [
            "--address", f"{host}:0", "--kvstore", f"{host}:{kv.info['grpc_port']}", "--lease-ttl", str(c.lease_ttl),
            "--worker-id", f"prefill-{i}", *common, *(c.prefill_args[i] if i < len(c.prefill_args) else ())])
            for i in range(c.num_prefill)]
        workers += [self._spawn(f"decode-{i}", "decode_worker", [
            "--address", f"{host}:0", "--worker-id", f"decode-{i}", *common, *c.extra_decode_args,
            *(["--kvstore", f"{host}:{kv.info['grpc_port']}"] if c.decode_kvstore else [])])
            for i in range(c.num_decode)]
        self._wait_ready(workers)
        self._wait_ready([self._spawn("gateway", "gateway", self.gateway_args(c.http_port, c.grpc_port))])
        return self

    def gateway_args(self, http_port: int = 0, grpc_port: int = 0) -> list[str]:
        """The arguments of a gateway in front of this stack's workers (a test may start another)."""
        c = self.config
        names = [s.name for s in self.services]
        args = ["--host", c.host, "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--model", self.model_dir,
                "--prefill", ",".join(self.address(n) for n in names if n.startswith("prefill")),
                "--decode", ",".join(self.address(n) for n in names if n.startswith("decode"))]
        return args + (["--api-key", c.api_key] if c.api_key else []) + list(c.extra_gateway_args)

    def start_kvstore(self, port: int = 0, snapshot: str | None = None) -> Service:
        """Starts the kvstore (``port``: its gRPC port; 0 picks one) and waits until it serves. Also
        a new one in place of a kvstore that died (launcher.chaos): the workers reconnect to it.
        ``snapshot``: its cache across restarts (default: the config's)."""
        for dead in [s for s in self.services if s.name == "kvstore" and s.proc.poll() is not None]:
            self.services.remove(dead)  # the one this replaces
            if dead.log:
                dead.log.close()
        c = self.config
        mc = ModelConfig.from_dir(self.model_dir)
        dtype = mc.torch_dtype if c.dtype == "auto" else c.dtype
        kv = self._spawn("kvstore", "kvstore", [
            "--address", f"{c.host}:{port}", "--dtype", dtype, "--block-size", "16", "--num-layers", str(mc.num_layers),
            "--num-kv-heads", str(mc.num_kv_heads), "--head-dim", str(mc.head_dim),
            "--cpu-capacity", c.kvstore_capacity, "--nixl" if c.nixl else "--no-nixl", "--metrics-port", "0",
            *(["--snapshot", path] if (path := c.kvstore_snapshot if snapshot is None else snapshot) else []),
        ])
        self._wait_ready([kv])
        return kv

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM everyone (they drain), SIGKILL what is left after ``timeout_s``."""
        for svc in reversed(self.services):
            if svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for svc in self.services:
            try:
                svc.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time: killing", svc.name)
                svc.proc.kill()
                svc.proc.wait()
            if svc.log:
                svc.log.close()

    # ---- addresses --------------------------------------------------------------------------
    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def address(self, name: str) -> str:
        return f"{self.config.host}:{self.service(name).info['grpc_port']}"

    def metrics_targets(self) -> list[tuple[str, dict[str, str], str]]:
        """(job, labels, host:port) of every service's /metrics (the gateway's is on its HTTP port)."""
        out = []
        for svc in self.services:
            job = svc.name.rsplit("-", 1)[0]  # kvstore, prefill, decode, gateway
            port = svc.info["http_port"] if job == "gateway" else svc.info.get("metrics_port")
            if port:
                out.append((job, {"service": svc.name}, f"{self.config.host}:{port}"))
        return out

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.service('gateway').info['http_port']}"

    @property
    def grpc_address(self) -> str:
        return self.address("gateway")

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

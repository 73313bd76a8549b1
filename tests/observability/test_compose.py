"""compose/: the compose files validate (Debian's docker-compose, no engine needed), every Grove
service's command starts in this checkout and parses, Prometheus' config passes promtool and scrapes
each service where it serves /metrics, and Grafana's provisioning points at the dashboard."""
from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock
from typing import Any

import pytest
import yaml

from tests.observability.conftest import COMPOSE, ROOT, require_tool

PARSERS = {  # module -> the function its entry point parses argv with
    "gateway": lambda argv: importlib.import_module("gateway.__main__").parse_args(argv),
    "prefill_worker": lambda argv: importlib.import_module("prefill_worker.__main__").parse_args(argv),
    "decode_worker": lambda argv: importlib.import_module("decode_worker.__main__").parse_args(argv),
    "kvstore": lambda argv: importlib.import_module("kvstore.cli").build_parser().parse_args(argv),
}
HEALTH_SERVICES = {"gateway": "grove.v1.Grove", "prefill_worker": "grove.internal.v1.PrefillWorker",
                   "decode_worker": "grove.internal.v1.DecodeWorker", "kvstore": "grove.internal.v1.KVStore"}


def compose_config(*files: str) -> dict[str, Any]:
    """The merged, interpolated config as docker-compose resolves it."""
    binary = require_tool("docker-compose")
    args = [binary, *(a for f in files for a in ("-f", str(COMPOSE / f)))]
    check = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    out = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=120, check=True)
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config("docker-compose.yml")


def test_gpu_override_validates() -> None:
    cfg = compose_config("docker-compose.yml", "docker-compose.gpu.yml")
    for name in ("prefill", "decode", "kvstore"):
        svc = cfg["services"][name]
        assert svc["build"]["args"]["TORCH_VARIANT"].startswith("cu")
        assert svc["environment"]["GROVE_DEVICE"] == "cuda"
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert {s.get("image") for s in cfg["services"].values() if "build" in s} == {"grove:cuda"}


def mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read-only) of a volume in short or long syntax."""
    if isinstance(volume, dict):
        return volume.get("source", ""), volume["target"], bool(volume.get("read_only"))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def argv_of(service: dict[str, Any], tmp: Path) -> list[str]:
    """The argv the container's shell hands to ``python``: the command run by this machine's sh with
    the service's environment and a ``python`` that prints its arguments."""
    shim = tmp / "python"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c 'import json, sys; "
                    f"print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    shim.chmod(0o755)
    command = service["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    command = [c.replace("$$", "$") for c in command]  # `config` output keeps compose's escapes
    env = {**os.environ, **{k: str(v) for k, v in service.get("environment", {}).items()},
           "PATH": f"{tmp}:{os.environ['PATH']}", "HOSTNAME": "c0ffee123456"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_grove_command_parses_and_starts(config: dict[str, Any], tmp_path: Path) -> None:
    grove = {name: svc for name, svc in config["services"].items() if "build" in svc}
    assert sorted(grove) == ["decode", "gateway", "kvstore", "prefill"]
    modules = {}
    for name, svc in grove.items():
        argv = argv_of(svc, tmp_path)
        assert argv[0] == "-m" and argv[1] in PARSERS, argv
        module, args = argv[1], argv[2:]
        modules[name] = module
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        with mock.patch.dict(os.environ, env):  # the flags' defaults read the service's environment
            parsed = PARSERS[module](args)  # unknown flags or bad values exit here
        assert parsed.metrics_names == env["GROVE_METRICS_NAMES"] == "grove", name  # every service's names
        assert "c0ffee123456" in str(vars(parsed)) or module == "kvstore", f"{name}: no per-replica id"
        # the health probe asks the port the service binds for the service's own name
        probe = svc["healthcheck"]["test"]
        assert probe[1:4] == ["python", "-m", "runtime.healthcheck"] and probe[5] == HEALTH_SERVICES[module]
        bound = parsed.address if module != "gateway" else f"{parsed.host}:{parsed.grpc_port}"
        assert probe[4].rsplit(":", 1)[1] == bound.rsplit(":", 1)[1], (name, probe, bound)
    assert modules["prefill"] == "prefill_worker" and modules["decode"] == "decode_worker"

    def starts(module: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    with ThreadPoolExecutor(2) as pool:
        for module, out in zip(modules.values(), pool.map(starts, modules.values())):
            assert out.returncode == 0 and "usage:" in out.stdout, (module, out.stderr)


def test_scalable_workers_and_published_ports(config: dict[str, Any], tmp_path: Path) -> None:
    services, networks = config["services"], config["networks"]
    internal = {n for n, spec in networks.items() if spec.get("internal")}
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"gateway", "grafana"}
    for name in ("kvstore", "prefill", "decode", "prometheus"):
        assert set(services[name]["networks"]) <= internal, name
    for name in ("prefill", "decode"):  # --scale N: nothing fixed per replica
        assert "container_name" not in services[name] and "ports" not in services[name]
    gateway = PARSERS["gateway"](argv_of(services["gateway"], tmp_path)[2:])
    assert gateway.prefill.startswith("dns:prefill:") and gateway.decode.startswith("dns:decode:")
    mounts = [mount(v) for name, svc in services.items() if "build" in svc and name != "kvstore"
              for v in svc["volumes"]]
    assert mounts and all(target == "/models/model" and ro for _, target, ro in mounts), mounts
    # the kvstore mounts no model, only the volume its cache is kept on across restarts
    assert [mount(v) for v in services["kvstore"]["volumes"]] == [("kvstore-data", "/data", False)]
    kvstore = PARSERS["kvstore"](argv_of(services["kvstore"], tmp_path)[2:])
    assert kvstore.snapshot == "/data/kv.snapshot" and "kvstore-data" in config["volumes"]


def test_prometheus_config_passes_promtool_and_scrapes_every_service(config: dict[str, Any], tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    out = subprocess.run([promtool, "check", "config", str(COMPOSE / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets: dict[str, str] = {}
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                targets[t.rsplit(":", 1)[0]] = t.rsplit(":", 1)[1]
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                targets[name] = str(sd["port"])
    services = config["services"]
    for name in ("kvstore", "prefill", "decode", "gateway"):
        argv = argv_of(services[name], tmp_path)
        parsed = PARSERS[argv[1]](argv[2:])
        port = parsed.http_port if name == "gateway" else parsed.metrics_port
        assert targets.get(name) == str(port), f"{name} serves /metrics on {port}; prometheus.yml: {targets.get(name)}"
    for name in ("prefill", "decode"):  # scaled: every replica is found through DNS
        job = next(j for j in prom["scrape_configs"] if j["job_name"] == name)
        assert job["dns_sd_configs"][0]["names"] == [name]


def test_grafana_provisioning_points_at_the_dashboard(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    mounts = {Path(source).resolve(): target for source, target, _ in map(mount, grafana["volumes"])
              if source.startswith("/")}
    provisioning = COMPOSE / "grafana/provisioning"
    assert mounts[provisioning.resolve()] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((provisioning / "dashboards/grove.yml").read_text())["providers"][0]
    assert mounts[(COMPOSE / "grafana/dashboards").resolve()] == provider["options"]["path"]
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and set(config["services"]["prometheus"]["networks"]) & set(
        grafana["networks"])
    dashboard = json.loads((COMPOSE / "grafana/dashboards/grove.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}

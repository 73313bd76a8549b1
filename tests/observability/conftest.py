"""One real stack (kvstore, 1 prefill, 1 decode, gateway) for the package, a real Prometheus server
scraping it, and the traffic both look at. External tools come from apt (``make tools``); without
them the tests that need them skip with the reason printed."""
from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from launcher.stack import Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (`make tools` installs it with apt-get where it can)"
        print(f"SKIP: {reason}")  # noqa: T201 - the reason shows in -s output and in the summary
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of one /metrics endpoint."""
    text = httpx.get(f"http://{address}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    assert name in samples, f"{name} is not exported; got {sorted(samples)}"
    return sum(v for labels, v in samples[name] if all(labels.get(k) == x for k, x in match.items()))


@pytest.fixture(scope="package")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # every metric under Grove's names and vLLM's (test_vllm_metric_names.py; the rest read Grove's)
    config = StackConfig(model=str(model_dir), num_prefill=1, num_decode=1, worker_kv_gb=0.25,
                         log_dir=str(tmp_path_factory.mktemp("obs-stack")), threads_per_worker=1, metrics_names="both")
    with Stack(config) as s:
        yield s


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {r.status_code} {body}"
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, ok: Any, timeout_s: float = 30.0) -> float:
        """Polls ``expr`` until ``ok(value)``; returns that value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.scalar(expr)
            if value is not None and ok(value):
                return value
            assert time.monotonic() < deadline, f"{expr} stayed at {value} for {timeout_s:.0f} s"
            time.sleep(0.5)


@pytest.fixture(scope="package")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """The Debian package's Prometheus server scraping every service of the stack once a second;
    yields once it has scraped every target successfully."""
    binary = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job, labels, address in stack.metrics_targets():
        jobs.setdefault(job, []).append({"targets": [address], "labels": labels})
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": job, "static_configs": targets} for job, targets in jobs.items()]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        expected = sum(len(t) for t in jobs.values())
        while True:
            assert proc.poll() is None, f"prometheus exited:\n{(tmp / 'prometheus.log').read_text()}"
            try:
                resp = httpx.get(f"{prom.url}/api/v1/targets", timeout=5)
                # while it starts, Prometheus answers 503 "Service Unavailable" (not JSON): not ready yet
                targets = resp.json()["data"]["activeTargets"] if resp.status_code == 200 else []
                if targets and len(targets) == expected and all(t["health"] == "up" for t in targets):
                    break
            except httpx.HTTPError:
                targets = []
            assert time.monotonic() < deadline, f"targets not all up: {json.dumps(targets, indent=1)}"
            time.sleep(0.5)
        yield prom
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@dataclass
class Traffic:
    responses: list[dict[str, Any]]
    ttfts: list[float]  # client-side, seconds

    def usage(self, key: str) -> int:
        return sum(r["usage"][key] for r in self.responses)

    @property
    def cached_tokens(self) -> int:
        return sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in self.responses)


@pytest.fixture(scope="package")
def traffic(stack: Stack, prometheus: Prometheus) -> Traffic:
    """Five requests sent after Prometheus has a first scrape of every counter at zero; two share a
    96-token prefix (six blocks), so the second finds it in the kvstore."""
    rng = random.Random(7)
    prefix = [rng.randrange(1000, 30000) for _ in range(96)]
    prompts: list[dict[str, Any]] = [
        {"prompt": prefix + [rng.randrange(1000, 30000) for _ in range(10)]},
        {"prompt": prefix + [rng.randrange(1000, 30000) for _ in range(10)]},
        {"prompt": "The capital of France is", "stream": True, "stream_options": {"include_usage": True}},
        {"prompt": [rng.randrange(1000, 30000) for _ in range(40)]},
        {"messages": [{"role": "user", "content": "Name three colours."}], "stream": True,
         "stream_options": {"include_usage": True}},
    ]
    responses, ttfts = [], []
    for body in prompts:
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        body = {**body, "max_tokens": 8, "temperature": 0}
        start = time.perf_counter()
        if not body.get("stream"):
            r = httpx.post(stack.http_url + path, json=body, timeout=120)
            assert r.status_code == 200, r.text
            responses.append(r.json())
            ttfts.append(time.perf_counter() - start)  # upper bound: the whole request
            continue
        with httpx.stream("POST", stack.http_url + path, json=body, timeout=120) as r:
            assert r.status_code == 200, r.read()
            events = []
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    if not events:
                        ttfts.append(time.perf_counter() - start)
                    events.append(json.loads(line[6:]))
        responses.append(events[-1])  # the usage chunk
    assert responses[1]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 96, \
        "the shared prefix was not found in the kvstore: the prefix-cache metrics would prove nothing"
    return Traffic(responses, ttfts)

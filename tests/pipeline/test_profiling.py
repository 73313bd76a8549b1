"""vLLM's ``/start_profile`` and ``/stop_profile`` on a gateway with the profiler on, in front of
the stack's workers (each started with ``--profiler-dir``): every worker profiles the requests
between the two and writes a Chrome trace of its engine's steps; asked twice, the workers say
why not; a gateway without the profiler does not serve them."""
from __future__ import annotations

import json
from pathlib import Path

import httpx

from launcher.stack import Stack
from launcher.stack_probe import worker_stats
from tests.pipeline.gateway_process import Gateway


def test_every_worker_writes_a_trace_of_the_requests_between_start_and_stop(stack: Stack, tmp_path: Path) -> None:
    assert httpx.post(stack.http_url + "/start_profile", timeout=10).status_code == 404  # the profiler is off
    gw = Gateway(stack, tmp_path, "--enable-profiler")
    try:
        r = httpx.post(gw.http_url + "/start_profile", timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["workers"]) == len(worker_stats(stack))
        again = httpx.post(gw.http_url + "/start_profile", timeout=60)
        assert again.status_code == 400 and "profiling already" in again.json()["error"]["message"], again.text
        for k in range(2):  # both prefill workers see a request
            done = httpx.post(gw.http_url + "/v1/completions", timeout=120, json={
                "prompt": f"Profile run {k}: the quick brown fox", "max_tokens": 16, "temperature": 0})
            assert done.status_code == 200, done.text
        r = httpx.post(gw.http_url + "/stop_profile", timeout=120)
        assert r.status_code == 200, r.text
        traces = r.json()["traces"]
        assert len(traces) == len(worker_stats(stack))
        names = set()
        for path in traces.values():
            events = json.loads(Path(path).read_text())["traceEvents"]
            names |= {e.get("name", "") for e in events}
        assert any(n.startswith("aten::") for n in names)  # the model's operators, timed
        assert httpx.post(gw.http_url + "/stop_profile", timeout=60).status_code == 400  # not profiling
    finally:
        gw.stop()

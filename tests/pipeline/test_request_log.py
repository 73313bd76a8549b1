"""vLLM's --enable-log-requests on a gateway in front of the stack's workers: each request's
arrival (its first --max-log-len prompt token ids, its sampling parameters) and its end (finished,
or aborted by a client gone) in the gateway's log; an embedding's too."""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from launcher.stack import Stack
from tests.pipeline.gateway_process import Gateway


def test_requests_are_logged_from_arrival_to_end(stack: Stack, tmp_path: Path) -> None:
    gw = Gateway(stack, tmp_path, "--enable-log-requests", "--max-log-len", "4")
    try:
        body = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
        r = httpx.post(gw.http_url + "/v1/completions", json=body, headers={"X-Request-Id": "logged-1"}, timeout=60)
        assert r.status_code == 200, r.text
        with httpx.stream("POST", gw.http_url + "/v1/completions", headers={"X-Request-Id": "logged-2"}, timeout=60,
                          json={**body, "max_tokens": 400, "stream": True}) as s:
            next(s.iter_lines())  # one chunk, then the client leaves
        r = httpx.post(gw.http_url + "/v1/embeddings", json={"input": "The capital of France is"},
                       headers={"X-Request-Id": "logged-3"}, timeout=60)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while (not all(f"Finished request logged-{k}" in gw.log.read_text() for k in (2, 3))
               and time.monotonic() < deadline):
            time.sleep(0.05)
        log = gw.log.read_text()
    finally:
        gw.stop()
    received = re.search(r"Received request (\S*logged-1\S*): prompt_token_ids: \[(\d+), (\d+), (\d+), (\d+)\]\.\.\. "
                         r"\((\d+)\), params: SamplingParams\(.*max_tokens=5", log)
    assert received is not None, log
    assert int(received.group(6)) > 4  # the prompt is longer than the 4 ids shown
    assert re.search(r"Finished request \S*logged-1\S*: length, 5 output tokens, TTFT [\d.]+ s, e2e [\d.]+ s", log), log
    assert re.search(r"Finished request \S*logged-2\S*: aborted after \d+ output tokens", log), log
    # an embedding: its pooling parameters, and its end
    assert re.search(r"Received request \S*logged-3\S*: prompt_token_ids: \[\d+, \d+, \d+, \d+\]\.\.\. \(\d+\), "
                     r"params: PoolingParams\(", log), log
    assert re.search(r"Finished request \S*logged-3\S*: pooled, e2e [\d.]+ s", log), log

"""The workers' periodic stats lines (vLLM's), in the stack's own logs: after a request, a decode
worker logs its generation throughput and a prefill worker its prompt throughput."""
from __future__ import annotations

import time

import httpx

from launcher.stack import Stack


def test_workers_log_their_stats_while_they_work(stack: Stack) -> None:
    body = {"prompt": "stats: " + "red green blue " * 20, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    r = httpx.post(stack.http_url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    logs = {name: stack.dir / f"{name}.log" for name in ("prefill-0", "prefill-1", "decode-0", "decode-1")}
    deadline = time.monotonic() + 15  # (the package's stack logs every second)
    while time.monotonic() < deadline:
        lines = {n: [ln for ln in p.read_text().splitlines() if "stats:" in ln and "throughput" in ln]
                 for n, p in logs.items()}
        decode = [ln for n, ls in lines.items() if n.startswith("decode") for ln in ls
                  if "generation throughput: 0.0" not in ln]
        prefill = [ln for n, ls in lines.items() if n.startswith("prefill") for ln in ls
                   if "prompt throughput: 0.0" not in ln]
        if decode and prefill:
            break
        time.sleep(0.2)
    assert decode and prefill, lines
    assert "running:" in decode[-1] and "KV cache usage:" in decode[-1]

"""An RL trainer's step against the stack, timed (not a test): what a weight update and sleep mode
cost on this machine.

    .venv/bin/python scripts/bench_weight_update.py [--dtype float32|bfloat16] [--rounds 3]

One stack (kvstore, 1 prefill and 1 decode worker, a gateway in development mode with sleep mode
on) serving the bundled model; a second checkpoint (the bundled one with its norms rescaled,
tests/weights_data.py) in a temporary directory. Each round, against the same stack:
- ``/pause`` (mode wait), ``/update_weights`` to the other checkpoint, ``/resume``: seconds each;
- prompts of ~1,500 tokens to put the KV pools to use (as serving leaves them), then
  ``/sleep?level=1`` and ``/wake_up``; ``/sleep?level=2``, ``/wake_up?tags=weights``,
  ``/wake_up?tags=kv_cache``: seconds each, and the workers' resident memory given back
  (/proc/PID/status VmRSS before and after sleeping, summed over the two workers);
- a greedy request after each: its answer equal to the first round's on the same weights.
Prints a table of medians and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from engine.convert import convert_smollm2
from launcher.stack import Stack, StackConfig
from bench.checkpoints import retrained_checkpoint

logger = logging.getLogger("bench_weight_update")
MiB = 2**20
FILL = " ".join(f"Entry {i}: wind from the west, the lamp lit at dusk, two ships seen." for i in range(100))
FILL_PROMPTS = 8
PROMPT = "The keeper of the lighthouse wrote in his log every night, and on the last night he wrote"


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _workers_rss(stack: Stack) -> int:
    return sum(_rss(s.proc.pid) for s in stack.services if s.name.startswith(("prefill", "decode")))


def _timed(client: httpx.Client, path: str, **kw: Any) -> float:
    t0 = time.perf_counter()
    r = client.post(path, **kw)
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {r.text}")
    return time.perf_counter() - t0


def _answer(client: httpx.Client) -> list[int]:
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "temperature": 0,
                                             "return_token_ids": True})
    r.raise_for_status()
    return r.json()["choices"][0]["token_ids"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model_dir = convert_smollm2()
    with tempfile.TemporaryDirectory(prefix="grove-bench-weights-") as tmp:
        other = retrained_checkpoint(model_dir, Path(tmp) / "other")
        config = StackConfig(model=str(model_dir), num_prefill=1, num_decode=1, worker_kv_gb=0.5, dtype=args.dtype,
                             log_dir=str(Path(tmp) / "logs"),
                             extra_gateway_args=("--server-dev-mode", "--enable-sleep-mode"))
        rows: list[dict[str, float]] = []
        answers: dict[str, list[int]] = {}
        with Stack(config) as stack, httpx.Client(base_url=stack.http_url, timeout=600) as client:
            for _ in range(args.rounds):
                for name, path in (("other", other), ("bundled", model_dir)):
                    row: dict[str, float] = {"pause_s": _timed(client, "/pause", params={"mode": "wait"}),
                                             "update_s": _timed(client, "/update_weights",
                                                                json={"update_info": {"path": str(path)}}),
                                             "resume_s": _timed(client, "/resume")}
                    got = _answer(client)
                    if answers.setdefault(name, got) != got:
                        raise RuntimeError(f"the {name} weights answered otherwise than before")
                    for i in range(FILL_PROMPTS):  # the pools' pages in use, as serving leaves them
                        r = client.post("/v1/completions", json={"prompt": f"{i} " + FILL, "max_tokens": 1})
                        r.raise_for_status()
                    awake = _workers_rss(stack)
                    row["sleep1_s"] = _timed(client, "/sleep", params={"level": "1", "mode": "wait"})
                    row["sleep1_given_mib"] = (awake - _workers_rss(stack)) / MiB
                    row["wake1_s"] = _timed(client, "/wake_up")
                    if _answer(client) != got:
                        raise RuntimeError("a level-1 sleep changed the answer")
                    awake = _workers_rss(stack)
                    row["sleep2_s"] = _timed(client, "/sleep", params={"level": "2", "mode": "wait"})
                    row["sleep2_given_mib"] = (awake - _workers_rss(stack)) / MiB
                    row["wake_weights_s"] = _timed(client, "/wake_up", params={"tags": "weights"})
                    row["wake_kv_s"] = _timed(client, "/wake_up", params={"tags": "kv_cache"})
                    if _answer(client) != got:
                        raise RuntimeError("a level-2 sleep changed the answer")
                    rows.append(row)
        medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        if answers["other"] == answers["bundled"]:
            raise RuntimeError("the two checkpoints answered alike: the update is not shown")
    width = max(map(len, medians))
    print(f"\n{args.dtype}, 1 prefill + 1 decode worker, {len(rows)} updates (medians):")  # noqa: T201
    for k, v in medians.items():
        print(f"  {k:<{width}}  {v:9.3f}")  # noqa: T201
    if args.out:
        Path(args.out).write_text(json.dumps({"dtype": args.dtype, "rows": rows, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()

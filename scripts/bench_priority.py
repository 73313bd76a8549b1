"""Priority scheduling against a running stack (not a test): time to first token of requests that
arrive behind a flood, at a high priority and at the flood's own, sent side by side.

    .venv/bin/python -m launcher &   # or any running Grove gateway
    .venv/bin/python scripts/bench_priority.py --url http://127.0.0.1:8000 [--flood 24] [--late 4] [--rounds 2]

Each round: ``--flood`` requests of a long prompt at priority 5, then after a second ``--late`` at
priority 0 and ``--late`` at priority 5, at once. The prompts differ, so no prefix cache helps
either. Reported: the median TTFT of each late group and their ratio (the baseline is the low group).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

import httpx

logger = logging.getLogger("bench_priority")
TEXT = "The quick brown fox jumps over the lazy dog near the river bank. " * 60


async def ttft(client: httpx.AsyncClient, url: str, prompt: str, priority: int) -> float:
    """Seconds to the first streamed token."""
    t0 = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True, "priority": priority}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                return time.perf_counter() - t0
    raise RuntimeError("the stream ended without a token")


async def run(url: str, flood: int, late: int, rounds: int) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        for r in range(rounds):
            prompt = f"Summarize the following text (round {r}, request {{}}). {TEXT}"
            background = [asyncio.create_task(ttft(client, url, prompt.format(f"f{i}"), 5)) for i in range(flood)]
            await asyncio.sleep(1.0)
            high = [asyncio.create_task(ttft(client, url, prompt.format(f"h{i}"), 0)) for i in range(late)]
            low = [asyncio.create_task(ttft(client, url, prompt.format(f"l{i}"), 5)) for i in range(late)]
            h, lo = statistics.median(await asyncio.gather(*high)), statistics.median(await asyncio.gather(*low))
            await asyncio.gather(*background)
            logger.info("round %d: behind %d requests, late TTFT median: priority 0 %.2f s, priority 5 %.2f s "
                        "(%.1fx sooner)", r, flood, h, lo, lo / h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--flood", type=int, default=24)
    p.add_argument("--late", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    asyncio.run(run(args.url, args.flood, args.late, args.rounds))


if __name__ == "__main__":
    main()

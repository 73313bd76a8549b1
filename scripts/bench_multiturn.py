"""Multi-turn chat on the model's own answers: decode workers that write what they generate to
the kvstore, against decode workers that do not.

Each conversation sends its turns one after another. Turn t's messages: a system prompt, every
earlier user message (ShareGPT's) with the model's own answer to it, and the next user message,
as a chat client sends them. Conversations run ``--concurrency`` at a time. Two stacks, one after
the other in one run, the same but for the decode workers' ``--kvstore``; greedy answers make the
two runs send the same prompts. Per run, over turns 2 and later: prompt tokens, tokens read from a
cache, tokens prefilled, time to first token; then the ratios.

    .venv/bin/python scripts/bench_multiturn.py --conversations 8 --turns 4 --max-tokens 128
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass, field

import httpx

from bench.datasets.multiturn import SYSTEM_PROMPT
from bench.datasets.sharegpt import iter_records, turns
from engine.paths import default_model_dir
from launcher.stack import Stack, StackConfig

logger = logging.getLogger("bench_multiturn")


@dataclass
class Turn:
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    answer: str


@dataclass
class Run:
    name: str
    turns: list[list[Turn]] = field(default_factory=list)  # by conversation

    def later(self) -> list[Turn]:
        return [t for conv in self.turns for t in conv[1:]]


def conversations(n: int, num_turns: int, max_chars: int) -> list[list[str]]:
    """The user messages of the first ``n`` ShareGPT conversations with ``num_turns`` of them."""
    out = []
    for record in iter_records():
        users = [text for role, text in turns(record) if role == "user"]
        if len(users) >= num_turns and all(0 < len(u) <= max_chars for u in users[:num_turns]):
            out.append(users[:num_turns])
            if len(out) == n:
                break
    return out


async def turn(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> Turn:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, text, usage = None, [], None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(c["delta"].get("content") or "")
    assert usage is not None and ttft is not None
    return Turn(usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], ttft, "".join(text))


async def conversation(client: httpx.AsyncClient, users: list[str], max_tokens: int) -> list[Turn]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    out = []
    for u in users:
        messages.append({"role": "user", "content": u})
        t = await turn(client, messages, max_tokens)
        messages.append({"role": "assistant", "content": t.answer})
        out.append(t)
    return out


async def run_all(url: str, convs: list[list[str]], concurrency: int, max_tokens: int) -> list[list[Turn]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(users: list[str]) -> list[Turn]:
        async with sem:
            return await conversation(client, users, max_tokens)

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return list(await asyncio.gather(*(one(u) for u in convs)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens an answer may take")
    p.add_argument("--max-chars", type=int, default=600, help="longest user message taken from ShareGPT")
    p.add_argument("--concurrency", type=int, default=2, help="conversations at a time")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--num-prefill", type=int, default=1)
    p.add_argument("--threads-per-worker", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    convs = conversations(args.conversations, args.turns, args.max_chars)
    runs = []
    for name, write in (("decode writes to the kvstore", True), ("decode does not", False)):
        config = StackConfig(model=str(default_model_dir()), num_prefill=args.num_prefill, num_decode=1,
                             dtype=args.dtype, threads_per_worker=args.threads_per_worker, decode_kvstore=write)
        with Stack(config) as stack:
            runs.append(Run(name, asyncio.run(run_all(stack.http_url, convs, args.concurrency, args.max_tokens))))
    on, off = runs
    same = [t.answer for c in on.turns for t in c] == [t.answer for c in off.turns for t in c]
    print(f"{len(convs)} conversations x {args.turns} turns, answers up to {args.max_tokens} tokens, "
          f"{args.concurrency} at a time, {args.dtype}; the same answers in both runs: {same}")
    print("| run (turns 2+) | prompt tokens | read from a cache | prefilled | TTFT mean | TTFT p50 |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        later = r.later()
        prompt = sum(t.prompt_tokens for t in later)
        cached = sum(t.cached_tokens for t in later)
        ttfts = [t.ttft_s * 1000 for t in later]
        print(f"| {r.name} | {prompt} | {cached} ({cached / prompt:.0%}) | {prompt - cached} | "
              f"{statistics.mean(ttfts):.0f} ms | {statistics.median(ttfts):.0f} ms |")
    a, b = on.later(), off.later()
    print(f"tokens prefilled, off / on: {sum(t.prompt_tokens - t.cached_tokens for t in b) / max(1, sum(t.prompt_tokens - t.cached_tokens for t in a)):.2f}x; "
          f"TTFT mean, off / on: {statistics.mean(t.ttft_s for t in b) / statistics.mean(t.ttft_s for t in a):.2f}x")


if __name__ == "__main__":
    main()

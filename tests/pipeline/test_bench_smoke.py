"""`grove bench` against the real stack: a short run writes a complete result, plots and ratios."""
from __future__ import annotations

from pathlib import Path

from bench.smoke import check_result_file, run_smoke
from launcher.stack import Stack


def test_short_bench_run_against_the_stack(stack: Stack, tmp_path: Path) -> None:
    # raises SmokeFailure listing every problem (2 prompts: the transformers baselines' time is most of it)
    doc = run_smoke(stack.http_url, tmp_path, num_prompts=2)
    assert doc["greedy_check"]["ok"]
    assert {r["label"] for r in doc["runs"]}
    results = list(tmp_path.glob("*.json"))
    assert results and check_result_file(results[0]) == []


def test_short_bench_run_over_grpc(stack: Stack, tmp_path: Path) -> None:
    doc = run_smoke(f"grpc://{stack.grpc_address}", tmp_path, num_prompts=2, max_tokens=8, concurrency=(2,))
    assert doc["greedy_check"]["ok"]
    assert doc["runs"][0]["metrics"]["failed"] == 0

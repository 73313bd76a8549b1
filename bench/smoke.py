"""The end-to-end check of the bench against a running server: ``run_smoke(url, out_dir)``.

A short real run (a few prompts, two concurrency levels, transformers baselines) that must write
a valid result JSON with every field, PNG plots that open, no failed request, and greedy outputs
matching the baselines'. The lead's e2e test calls it on the real Grove stack; tests/bench calls
it on a transformers-backed test server.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from bench.baselines import HFBaseline, HFModel
from bench.config import BenchConfig, LoadSpec, Target
from bench.orchestrate import run_bench
from bench.result import validate_result


class SmokeFailure(AssertionError):
    """The run finished but its result is not what a healthy server and bench produce."""


def png_problems(path: str | Path) -> list[str]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # checks the PNG's structure and checksums
            if img.format != "PNG" or min(img.size) < 100:
                return [f"{path}: not a sizeable PNG ({img.format}, {img.size})"]
    except (OSError, SyntaxError) as e:
        return [f"{path}: does not open as an image ({e})"]
    return []


def check_result_file(path: str | Path) -> list[str]:
    """Every problem with a written result: fields, plots, failures, greedy check."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    problems = validate_result(doc)
    for name in ("latency_cdf", "throughput"):
        if name not in doc.get("plots", {}):
            problems.append(f"plot {name!r} missing")
        else:
            problems += png_problems(doc["plots"][name])
    for run in doc.get("runs", []):
        if run["metrics"]["failed"]:
            errors = [r["error"] for r in run["requests"] if r["error"]]
            problems.append(f"run {run['label']!r}: {len(errors)} requests failed, first: {errors[0]}")
    check = doc.get("greedy_check", {})
    if check.get("enabled") and not check.get("ok"):
        for r in check["results"]:
            problems += [f"greedy mismatch {r['contender']} vs {r['baseline']}: {m['prompt_id']}: {m['message']}"
                         for m in r["mismatches"]]
    return problems


def run_smoke(base_url: str, out_dir: str | Path, *, dataset: str = "humaneval", num_prompts: int = 3,
              max_tokens: int = 16, max_prompt_tokens: int = 512, concurrency: Sequence[int] = (1, 2),
              baselines: Sequence[str] = ("hf", "hf-prompt-lookup"), model: str | None = None,
              hf: HFModel | None = None, baseline_objects: Sequence[HFBaseline] | None = None) -> dict[str, Any]:
    """Benchmark ``base_url`` briefly and check everything; raises SmokeFailure listing the problems.

    Returns the result document (also at ``out_dir/smoke.json``). ``hf`` reuses a loaded model;
    ``baseline_objects`` replaces the named baselines (tests use a deliberately different one).
    """
    config = BenchConfig(dataset=dataset, targets=(Target("grove", base_url),),
                         loads=tuple(LoadSpec(concurrency=c) for c in concurrency), num_prompts=num_prompts,
                         max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, baselines=() if baseline_objects is not None else tuple(baselines), model=model, label="smoke", progress=False)
    out = Path(out_dir) / "smoke.json"
    doc = run_bench(config, baselines=baseline_objects, hf=hf, out=out)
    problems = check_result_file(out)
    if not doc["greedy_check"]["enabled"]:
        problems.append("greedy check did not run")
    if problems:
        raise SmokeFailure("\n".join(problems))
    return doc

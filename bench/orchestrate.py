"""One benchmark from config to result document: prompts, server runs, baselines, checks, plots."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any, Sequence

from bench.baselines import HFBaseline, HFModel, make_baseline
from bench.client import Backend, make_backend
from bench.config import BenchConfig, LoadSpec, Target
from bench.datasets import load_prompts
from bench.greedy_check import TIE_TOL, check_run
from bench.jobs import Selection, select_jobs
from bench.metrics import stats, summarize
from bench.plots import write_plots
from bench.result import SCHEMA_VERSION, comparisons, run_entry, write_result
from bench.runner import RunOutput, run_load
from engine.paths import default_model_dir
from engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


def _backend(config: BenchConfig, target: Target) -> Backend:
    return make_backend(target.url, name=target.name, model=config.model, api=config.api,
                        prompt_format=config.prompt_format, timeout_s=config.request_timeout_s,
                        extra_body=target.extra_body)


async def _server_runs(config: BenchConfig, target: Target, sel: Selection) -> list[tuple[LoadSpec, RunOutput, dict[str, Any]]]:
    backend = _backend(config, target)
    try:
        await backend.start()
        if sel.warmup:
            warm = await run_load(backend, sel.warmup, LoadSpec(concurrency=len(sel.warmup)))
            failed = [r.error for r in warm.records if r.error]
            if failed:
                logger.warning("%s: %d warm-up requests failed (first: %s)", target.name, len(failed), failed[0])
        out = []
        for load in config.loads:
            output = await run_load(backend, sel.jobs, load, duration_s=config.duration_s, seed=config.seed or 0,
                                    progress=config.progress, desc=f"{target.name} {load.label}")
            out.append((load, output, backend.describe()))
        return out
    finally:
        await backend.aclose()


def _prompt_stats(sel: Selection) -> dict[str, Any]:
    s = stats(len(j.prompt_ids) for j in sel.jobs)
    assert s is not None  # sel.jobs is never empty here
    return s._asdict()


def _check(server: str, outputs: dict[str, RunOutput], baseline: HFBaseline, baseline_label: str, sel: Selection,
           tokenizer: Any) -> dict[str, Any]:
    eos = baseline.hf.model.generation_config.eos_token_id
    return check_run(server, outputs[server].records, sel.jobs, baseline_label, outputs[baseline_label].records,
                     baseline.reference, tokenizer, set(eos if isinstance(eos, list) else [eos])).to_json()


def run_bench(config: BenchConfig, *, baselines: Sequence[HFBaseline] | None = None, hf: HFModel | None = None,
              out: str | Path | None = None) -> dict[str, Any]:
    """Run everything ``config`` asks for and return the result document.

    ``baselines`` replaces the ones named in the config (tests pass a deliberately different
    one); ``hf`` reuses an already loaded model. With ``out``, writes the JSON there and the
    plots next to it.
    """
    prompts = load_prompts(config.dataset)  # first: a bad dataset fails before any model loads
    model_dir = config.tokenizer or str(default_model_dir())
    if baselines is None and config.baselines:
        hf = hf or HFModel.load(model_dir, threads=config.torch_threads)
        baselines = [make_baseline(name, hf, config.prompt_lookup_num_tokens) for name in config.baselines]
    baselines = list(baselines or [])
    tokenizer = hf.tokenizer if hf is not None else (baselines[0].hf.tokenizer if baselines else load_tokenizer(model_dir))

    sel = select_jobs(prompts, tokenizer, num=config.num_prompts, warmup=config.warmup, max_tokens=config.max_tokens,
                      max_prompt_tokens=config.max_prompt_tokens, seed=config.seed, skip=config.skip_prompts)
    if not sel.jobs:
        raise ValueError(f"no prompt of {config.dataset!r} fits max_prompt_tokens={config.max_prompt_tokens}")
    logger.info("%s: %d prompts (%d warm-up) of %d", config.dataset, len(sel.jobs), len(sel.warmup), len(prompts))

    runs: list[dict[str, Any]] = []
    outputs: dict[str, RunOutput] = {}
    for target in config.targets:
        for load, output, backend in asyncio.run(_server_runs(config, target, sel)):
            label = f"{target.name} {load.label}"
            runs.append(run_entry(label, target.name, "server", backend, load.to_json(), summarize(output.records, config.slo), output))
            outputs[label] = output
    baseline_labels = []
    for baseline in baselines:
        output = baseline.run(sel.jobs, progress=config.progress)
        label = f"{baseline.name} c=1"
        runs.append(run_entry(label, baseline.name, "baseline", baseline.describe(), LoadSpec(concurrency=1).to_json(),
                              summarize(output.records, config.slo), output))
        outputs[label] = output
        baseline_labels.append(label)

    check_results = []
    if config.check_greedy:
        servers = [r["label"] for r in runs if r["kind"] == "server"]
        check_results = [_check(server, outputs, baseline, label, sel, tokenizer)
                         for server in servers for baseline, label in zip(baselines, baseline_labels)]
    enabled = bool(check_results)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "tool": "grove bench",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "label": config.label, "config": config.to_json(),
        "dataset": {"name": config.dataset, "num_prompts": len(sel.jobs), "available": len(prompts),
                    "kinds": {k: sum(j.prompt.kind == k for j in sel.jobs) for k in ("completion", "chat")},
                    "prompt_tokens": _prompt_stats(sel)},
        "runs": runs,
        "comparisons": comparisons(runs, config.targets[0].name if config.targets else None),
        "greedy_check": {"enabled": enabled, "ok": all(c["ok"] for c in check_results) if enabled else None,
                         "tie_tol": TIE_TOL, "results": check_results},
        "plots": {},
    }
    if out is not None:
        out = Path(out)
        doc["plots"] = write_plots(doc, out.with_suffix(""))
        write_result(doc, out)
        logger.info("result: %s", out)
    return doc

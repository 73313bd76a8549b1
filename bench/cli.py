"""``grove bench``: command-line parsing for every bench subcommand, in one place."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from bench.config import BASELINES, SLO, BenchConfig, LoadSpec, Target

SUBCOMMANDS = ("run", "compare", "table", "suite", "datasets")
DOCS_SCENARIOS = Path(__file__).parent / "scenarios" / "docs.json"
USAGE = """usage: grove bench [run] [options]      benchmark a server; `grove bench --base-url URL ...` runs too
       grove bench compare A.json B.json  what changed between two results (B relative to A)
       grove bench table R1.json ...      markdown table of results (for docs/benchmarks.md)
       grove bench suite FILE [run options]  run a scenario list, then print the table
       grove bench datasets               list the datasets

Options of run: grove bench run --help"""


def _numbers(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [math.inf if kind is float and x.strip() == "inf" else kind(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def run_parser(prog: str = "grove bench run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Benchmark an OpenAI-compatible server (Grove's gateway) "
                                "with a real dataset, side by side with baselines; writes JSON and PNG plots.")
    g = p.add_argument_group("targets")
    g.add_argument("--base-url", help="server under test, e.g. http://127.0.0.1:8000 (omit to run baselines only)")
    g.add_argument("--name", default="grove", help="its name in the results (default: grove)")
    g.add_argument("--vs", action="append", default=[], metavar="URL", help="a second server run with the same load (repeatable)")
    g.add_argument("--vs-name", action="append", default=[], metavar="NAME", help="names for the --vs servers (default vs, vs2, ...)")
    g.add_argument("--baseline", action="append", default=[], choices=BASELINES,
                   help="run transformers generate in-process on the same prompts (repeatable)")
    g.add_argument("--prompt-lookup-num-tokens", type=int, default=10, help="draft length of hf-prompt-lookup (default 10)")
    g.add_argument("--torch-threads", type=int, default=2,
                   help="torch threads for the baselines (default 2; use 1 on cores other processes keep busy)")
    g.add_argument("--no-greedy-check", action="store_true", help="skip checking server outputs against the baselines'")
    g = p.add_argument_group("prompts")
    g.add_argument("--dataset", default="sharegpt", help="sharegpt, humaneval, code-edit, shakespeare-quote, multiturn or jsonl:PATH")
    g.add_argument("--num-prompts", type=int, default=16, help="measured prompts (with --duration: the pool cycled through)")
    g.add_argument("--duration", type=float, metavar="S", help="send for this many seconds instead of each prompt once")
    g.add_argument("--warmup", type=int, default=1, help="warm-up requests before measuring (other prompts; default 1)")
    g.add_argument("--seed", type=int, default=0, help="prompt sampling and arrival seed (default 0)")
    g.add_argument("--no-shuffle", action="store_true", help="take prompts in dataset order")
    g.add_argument("--max-tokens", type=int, default=128, help="output tokens per request (default 128)")
    g.add_argument("--max-prompt-tokens", type=int, default=2048, help="skip longer prompts (default 2048)")
    g = p.add_argument_group("load (each value in a list is one run)")
    g.add_argument("--concurrency", type=_numbers(int), help="closed loop: requests in flight, e.g. 1,4,16 (default 1); "
                   "with --request-rate: a cap")
    g.add_argument("--request-rate", type=_numbers(float), help="open loop: arrivals per second, e.g. 1,2,inf")
    g.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape of arrival gaps: 1 = Poisson, <1 burstier")
    g = p.add_argument_group("goodput SLO (ms)")
    g.add_argument("--slo-ttft-ms", type=float)
    g.add_argument("--slo-tpot-ms", type=float)
    g.add_argument("--slo-e2e-ms", type=float)
    g = p.add_argument_group("requests")
    g.add_argument("--model", help="the request's model field (default: the server's first /v1/models entry)")
    g.add_argument("--tokenizer", help="model directory for tokenizing and baselines (default: Grove's bundled model)")
    g.add_argument("--api", choices=("auto", "completions"), default="auto",
                   help="auto: chat prompts to /v1/chat/completions; completions: everything as token ids")
    g.add_argument("--prompt-format", choices=("ids", "text"), default="ids", help="completion prompts as token ids or text")
    g.add_argument("--request-timeout", type=float, default=600.0, metavar="S")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="result JSON path; plots go next to it (default results/bench-DATASET-TIME.json)")
    g.add_argument("--label", help="scenario name shown in tables")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("-v", "--verbose", action="store_true")
    return p


def _loads(args: argparse.Namespace) -> tuple[LoadSpec, ...]:
    if args.request_rate:
        if args.concurrency and len(args.concurrency) > 1:
            raise ValueError("with --request-rate, --concurrency is a single cap")
        cap = args.concurrency[0] if args.concurrency else None
        return tuple(LoadSpec(concurrency=cap, request_rate=r, burstiness=args.burstiness) for r in args.request_rate)
    return tuple(LoadSpec(concurrency=c) for c in (args.concurrency or [1]))


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    targets = [Target(args.name, args.base_url)] if args.base_url else []
    names = args.vs_name + [f"vs{i + 1}" if i else "vs" for i in range(len(args.vs_name), len(args.vs))]
    targets += [Target(n, url) for n, url in zip(names, args.vs)]
    return BenchConfig(
        dataset=args.dataset, targets=tuple(targets), loads=_loads(args), num_prompts=args.num_prompts,
        duration_s=args.duration, warmup=args.warmup, max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
        seed=None if args.no_shuffle else args.seed, baselines=tuple(dict.fromkeys(args.baseline)),
        prompt_lookup_num_tokens=args.prompt_lookup_num_tokens, torch_threads=args.torch_threads, check_greedy=not args.no_greedy_check,
        slo=SLO(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms), model=args.model, tokenizer=args.tokenizer,
        api=args.api, prompt_format=args.prompt_format, request_timeout_s=args.request_timeout, label=args.label,
        progress=not args.no_progress)


def default_out(dataset: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"bench-{re.sub(r'[^A-Za-z0-9_-]+', '_', dataset.split(':')[0])}-{stamp}.json"


def cmd_run(argv: Sequence[str], report_to: TextIO | None = None) -> int:
    """Run one benchmark; the summary goes to stdout (``report_to`` overrides: suite keeps stdout for the table)."""
    args = run_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"grove bench: {e}", file=sys.stderr)  # noqa: T201
        return 2
    from bench.orchestrate import run_bench  # heavy imports (torch) only when running

    try:
        doc = run_bench(config, out=args.out or default_out(config.dataset))
    except (ValueError, FileNotFoundError) as e:  # a dataset that cannot be read or yields no prompt
        print(f"grove bench: {e}", file=sys.stderr)  # noqa: T201
        return 2
    from bench.report import format_report

    print(format_report(doc), file=report_to or sys.stdout)  # noqa: T201
    failed = sum(r["metrics"]["failed"] for r in doc["runs"])
    if failed:
        print(f"grove bench: {failed} requests failed", file=sys.stderr)  # noqa: T201
    return 1 if failed or doc["greedy_check"]["ok"] is False else 0


def cmd_compare(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="grove bench compare", description="Differences between two result files (B relative to A).")
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args(argv)
    from bench.compare import format_comparison
    from bench.result import load_result

    print(format_comparison(load_result(args.a), load_result(args.b), args.a, args.b))  # noqa: T201
    return 0


def cmd_table(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="grove bench table", description="Markdown table of result files, in the order given.")
    p.add_argument("results", nargs="+")
    args = p.parse_args(argv)
    from bench.result import load_result
    from bench.table import markdown_table

    sys.stdout.write(markdown_table([load_result(r) for r in args.results]))
    return 0


def cmd_suite(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="grove bench suite",
        description="Run every scenario of FILE (a JSON list of {\"name\": ..., \"args\": [run args]}), each with "
                    "the extra run args given here (e.g. --base-url), then print the markdown table of all results "
                    "to stdout (run summaries go to stderr). "
                    f"The scenarios behind docs/benchmarks.md: {DOCS_SCENARIOS}")
    p.add_argument("file")
    p.add_argument("--out-dir", default="results", help="one result (and plots) per scenario here")
    args, common = p.parse_known_args(argv)
    scenarios = json.loads(Path(args.file).read_text())
    paths, status = [], 0
    for s in scenarios:
        path = Path(args.out_dir) / f"{s['name']}.json"
        rc = cmd_run([*s["args"], *common, "--label", s["name"], "--out", str(path)], report_to=sys.stderr)
        status = status or rc
        if path.exists():
            paths.append(str(path))
    if paths:
        cmd_table(paths)
    return status


def cmd_datasets(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="grove bench datasets", description="List the datasets.").parse_args(argv)
    from bench.datasets import DATASETS

    for name, (_, description) in DATASETS.items():
        print(f"{name:18} {description}")  # noqa: T201
    print(f"{'jsonl:PATH':18} your own prompts: one JSON object a line with 'prompt' or 'messages'")  # noqa: T201
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)  # noqa: T201
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        argv = ["run", *argv]
    cmd, rest = argv[0], argv[1:]
    return {"run": cmd_run, "compare": cmd_compare, "table": cmd_table, "suite": cmd_suite, "datasets": cmd_datasets}[cmd](rest)

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

SUBCOMMANDS = ("run", "compare", "table", "suite", "docs", "datasets")
DOCS_SCENARIOS = Path(__file__).parent / "scenarios" / "docs.json"
DOCS_THREADS_PER_WORKER = 1
USAGE = """usage: grove bench [run] [options]      benchmark a server; `grove bench --base-url URL ...` runs too
       grove bench compare A.json B.json  what changed between two results (B relative to A)
       grove bench table R1.json ...      markdown table of results
       grove bench suite FILE [run options]  run a scenario list, then print the table
       grove bench docs [options]         start the stack, run the standard scenarios, rewrite docs/benchmarks.md
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
    g.add_argument("--extra-body", type=_json_object, default={}, metavar="JSON",
                   help="fields added to every request body of --base-url, e.g. '{\"lookahead\": false}'")
    g.add_argument("--vs-extra-body", type=_json_object, action="append", default=[], metavar="JSON",
                   help="the same for the --vs servers, in order (a --vs may repeat --base-url with other fields)")
    g.add_argument("--baseline", action="append", default=[], choices=BASELINES,
                   help="run transformers generate in-process on the same prompts (repeatable)")
    g.add_argument("--prompt-lookup-num-tokens", type=int, default=10, help="draft length of hf-prompt-lookup (default 10)")
    g.add_argument("--torch-threads", type=int, default=2,
                   help="torch threads for the baselines (default 2; use 1 on cores other processes keep busy)")
    g.add_argument("--no-greedy-check", action="store_true", help="skip checking server outputs against the baselines'")
    g = p.add_argument_group("prompts")
    g.add_argument("--dataset", default="sharegpt",
                   help="sharegpt, humaneval, code-edit, shakespeare-quote, multiturn, json-extract or jsonl:PATH")
    g.add_argument("--num-prompts", type=int, default=16, help="measured prompts (with --duration: the pool cycled through)")
    g.add_argument("--duration", type=float, metavar="S", help="send for this many seconds instead of each prompt once")
    g.add_argument("--warmup", type=int, default=1, help="warm-up requests before measuring (other prompts; default 1)")
    g.add_argument("--seed", type=int, default=0, help="prompt sampling and arrival seed (default 0)")
    g.add_argument("--no-shuffle", action="store_true", help="take prompts in dataset order")
    g.add_argument("--skip-prompts", type=int, default=0, metavar="N",
                   help="skip the first N prompts of that order: fresh prompts for a second run against a server "
                        "that has seen the first run's (lookahead's n-gram cache learns outputs)")
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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _loads(args: argparse.Namespace) -> tuple[LoadSpec, ...]:
    if args.request_rate:
        if args.concurrency and len(args.concurrency) > 1:
            raise ValueError("with --request-rate, --concurrency is a single cap")
        cap = args.concurrency[0] if args.concurrency else None
        return tuple(LoadSpec(concurrency=cap, request_rate=r, burstiness=args.burstiness) for r in args.request_rate)
    return tuple(LoadSpec(concurrency=c) for c in (args.concurrency or [1]))


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if len(args.vs_extra_body) > len(args.vs):
        raise ValueError("more --vs-extra-body than --vs")
    targets = [Target(args.name, args.base_url, args.extra_body)] if args.base_url else []
    names = args.vs_name + [f"vs{i + 1}" if i else "vs" for i in range(len(args.vs_name), len(args.vs))]
    bodies = args.vs_extra_body + [{}] * (len(args.vs) - len(args.vs_extra_body))
    targets += [Target(n, url, body) for n, url, body in zip(names, args.vs, bodies)]
    return BenchConfig(
        dataset=args.dataset, targets=tuple(targets), loads=_loads(args), num_prompts=args.num_prompts,
        duration_s=args.duration, warmup=args.warmup, max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
        seed=None if args.no_shuffle else args.seed, skip_prompts=args.skip_prompts,
        baselines=tuple(dict.fromkeys(args.baseline)),
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


def run_suite(scenarios: Sequence[dict[str, Any]], out_dir: str | Path, common: Sequence[str]) -> tuple[list[Path], int]:
    """Runs each scenario ({"name", "args"}) with ``common`` run args appended (they win over the
    scenario's own); summaries go to stderr. Returns the result files written and the exit status."""
    paths, status = [], 0
    for s in scenarios:
        path = Path(out_dir) / f"{s['name']}.json"
        path.unlink(missing_ok=True)  # a stale result must not stand in for a failed run
        rc = cmd_run([*s["args"], *common, "--label", s["name"], "--out", str(path)], report_to=sys.stderr)
        status = status or rc
        if path.exists():
            paths.append(path)
    return paths, status


def cmd_suite(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="grove bench suite", allow_abbrev=False,
        description="Run every scenario of FILE (a JSON list of {\"name\": ..., \"args\": [run args]}), each with "
                    "the extra run args given here (e.g. --base-url), then print the markdown table of all results "
                    "to stdout (run summaries go to stderr). "
                    f"The scenarios behind docs/benchmarks.md (`grove bench docs`): {DOCS_SCENARIOS}")
    p.add_argument("file")
    p.add_argument("--out-dir", default="results", help="one result (and plots) per scenario here")
    args, common = p.parse_known_args(argv)
    paths, status = run_suite(json.loads(Path(args.file).read_text()), args.out_dir, common)
    if paths:
        cmd_table([str(path) for path in paths])
    return status


def cmd_docs(argv: Sequence[str]) -> int:
    from bench.docs import COMMAND, DOCS_MARKDOWN

    p = argparse.ArgumentParser(
        prog="grove bench docs", allow_abbrev=False,
        description=f"Regenerate {DOCS_MARKDOWN} (`{COMMAND}`): start the local stack on the bundled model, run "
                    f"the scenarios of {DOCS_SCENARIOS}, write their results, rewrite the generated part of the "
                    "markdown file, stop the stack. Other options are run options applied to every scenario "
                    "(they win over the scenario's own), e.g. `--num-prompts 2 --max-tokens 16` for a quick try "
                    "(then give --doc and --out-dir elsewhere).")
    p.add_argument("--scenarios", default=str(DOCS_SCENARIOS), help="scenario file (default: the standard set)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this scenario (repeatable)")
    p.add_argument("--doc", default=str(DOCS_MARKDOWN), help=f"markdown file to rewrite (default {DOCS_MARKDOWN})")
    p.add_argument("--out-dir", default="results/bench-docs", help="result JSON, plots and stack logs")
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (default 1)")
    p.add_argument("--decode", type=int, default=1, help="decode workers (default 1)")
    p.add_argument("--threads-per-worker", type=int, default=DOCS_THREADS_PER_WORKER,
                   help=f"torch threads of each worker (default {DOCS_THREADS_PER_WORKER})")
    args, common = p.parse_known_args(argv)
    scenarios = json.loads(Path(args.scenarios).read_text())
    unknown = set(args.only) - {s["name"] for s in scenarios}
    if unknown:
        print(f"grove bench docs: no scenario named {sorted(unknown)}", file=sys.stderr)  # noqa: T201
        return 2
    scenarios = [s for s in scenarios if not args.only or s["name"] in args.only]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)  # progress of a long run; not every HTTP request
    from bench.docs import describe_stack, local_stack, regenerate
    from launcher.stack import StackConfig

    stack = StackConfig(num_prefill=args.prefill, num_decode=args.decode, threads_per_worker=args.threads_per_worker,
                        log_dir=str(Path(args.out_dir) / "stack-logs"))
    return regenerate(scenarios, local_stack(stack), stack=describe_stack(stack), doc=args.doc, out_dir=args.out_dir,
                      common=common, command=" ".join(["grove bench docs", *argv]) if argv else COMMAND)


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
    return {"run": cmd_run, "compare": cmd_compare, "table": cmd_table, "suite": cmd_suite, "docs": cmd_docs,
            "datasets": cmd_datasets}[cmd](rest)

"""CLI parsing, and the scenario suite end to end against the echo server."""
from __future__ import annotations

import json
import math

from bench.cli import config_from_args, main, run_parser
from bench.config import LoadSpec, Target


def _config(*argv: str):
    return config_from_args(run_parser().parse_args(list(argv)))


def test_flags_become_a_frozen_config() -> None:
    c = _config("--base-url", "http://a:1", "--vs", "http://b:2", "--vs", "http://c:3", "--vs-name", "nolookahead",
                "--concurrency", "1,4", "--baseline", "hf", "--baseline", "hf", "--slo-ttft-ms", "200", "--no-shuffle")
    assert c.targets == (Target("grove", "http://a:1"), Target("nolookahead", "http://b:2"), Target("vs2", "http://c:3"))
    assert c.loads == (LoadSpec(concurrency=1), LoadSpec(concurrency=4)) and c.baselines == ("hf",)
    assert c.slo.ttft_ms == 200 and c.slo.tpot_ms is None and c.seed is None
    c = _config("--base-url", "http://a:1", "--request-rate", "2,inf", "--burstiness", "0.5", "--concurrency", "8")
    assert [load.label for load in c.loads] == ["rate=2,b=0.5,c<=8", "rate=inf,b=0.5,c<=8"]
    assert math.isinf(c.loads[1].request_rate)
    json.dumps(c.to_json(), allow_nan=False)  # the config goes into the result file as is


def test_usage_errors_exit_2(capsys) -> None:
    assert main([]) == 2
    assert main(["--dataset", "humaneval"]) == 2  # neither a server nor a baseline
    assert "nothing to run" in capsys.readouterr().err
    assert main(["--base-url", "http://a:1", "--request-rate", "1", "--concurrency", "1,2"]) == 2
    assert main(["--help"]) == 0 and "grove bench compare" in capsys.readouterr().out


def test_suite_runs_each_scenario_and_prints_the_table(echo, tmp_path, capsys) -> None:
    url, source = echo
    scenarios = [{"name": "completion-c2", "args": ["--dataset", "humaneval", "--num-prompts", "4", "--max-tokens", "4",
                                                    "--concurrency", "2"]},
                 {"name": "multiturn-burst", "args": ["--dataset", "multiturn", "--num-prompts", "5", "--max-tokens", "3",
                                                      "--request-rate", "inf", "--concurrency", "3"]}]
    path = tmp_path / "scenarios.json"
    path.write_text(json.dumps(scenarios))
    assert main(["suite", str(path), "--out-dir", str(tmp_path / "results"), "--base-url", url, "--no-progress"]) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()  # stdout holds the markdown table only: `suite ... > benchmarks.md`
    assert "grove bench: completion-c2" in captured.err
    assert len(table) == 4 and table[0].startswith("| Scenario |") and table[1].startswith("|---")
    assert "| completion-c2 | humaneval | grove | c=2 |" in table[2]
    assert "| multiturn-burst | multiturn | grove | rate=inf,c<=3 |" in table[3]
    doc = json.loads((tmp_path / "results" / "multiturn-burst.json").read_text())
    assert doc["runs"][0]["metrics"]["completed"] == 5 and doc["greedy_check"]["enabled"] is False
    assert source.max_in_flight <= 3


def test_docs_scenarios_are_valid_runs() -> None:
    from bench.cli import DOCS_SCENARIOS
    from bench.datasets import DATASETS

    scenarios = json.loads(DOCS_SCENARIOS.read_text())
    assert len({s["name"] for s in scenarios}) == len(scenarios) >= 5
    used = set()
    for s in scenarios:
        c = _config(*s["args"], "--base-url", "http://grove:8000")
        used.add(c.dataset)
    # every dataset appears in the docs table but json-extract: it runs under a JSON schema, which
    # transformers' generate (the table's baseline) does not follow; scripts/bench_lookahead_engine.py
    # --json-schema measures it (docs/performance.md, "Structured output with lookahead")
    assert used == set(DATASETS) - {"json-extract"}

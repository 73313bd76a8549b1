"""The whole run path on the real model over real HTTP: CLI, JSON, plots, baselines, greedy check."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from bench.baselines import HFBaseline, HFModel
from bench.cli import main
from bench.result import validate_result
from bench.smoke import SmokeFailure, check_result_file, png_problems, run_smoke


def test_cli_run_compare_and_table(greedy_server, greedy_server_with_ids, tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    rc = main(["--base-url", greedy_server, "--vs", greedy_server_with_ids, "--vs-name", "with-ids",
               "--dataset", "humaneval", "--num-prompts", "2", "--max-tokens", "8", "--concurrency", "1,2",
               "--baseline", "hf", "--baseline", "hf-prompt-lookup", "--torch-threads", "1", "--slo-ttft-ms", "600000",
               "--out", str(out), "--no-progress", "--label", "e2e"])
    report = capsys.readouterr().out
    assert rc == 0, report
    doc = json.loads(out.read_text())
    assert validate_result(doc) == [] and check_result_file(out) == []
    labels = [r["label"] for r in doc["runs"]]
    assert labels == ["grove c=1", "grove c=2", "with-ids c=1", "with-ids c=2", "hf c=1", "hf-prompt-lookup c=1"]
    assert doc["runs"][1]["max_in_flight"] == 2
    for run in doc["runs"]:
        m = run["metrics"]
        assert m["completed"] == 2 and m["failed"] == 0 and m["output_tokens"] > 0
        assert m["ttft_ms"]["p50"] > 0 and m["e2e_ms"]["p99"] >= m["e2e_ms"]["p50"] and m["goodput"] > 0
        if run["kind"] == "server":  # the test server reports prefix sharing and (zero) lookahead
            assert m["cached_tokens"] is not None and m["accepted_prediction_tokens"] == 0
    ids_run = doc["runs"][2]["requests"]
    assert all(r["output_ids"] for r in ids_run)  # token ids taken from the stream
    check = doc["greedy_check"]
    assert check["ok"] is True and len(check["results"]) == 8
    assert all(r["checked"] == 2 and r["identical"] + r["near_tie"] == 2 for r in check["results"])
    pairs = {(c["contender"], c["baseline"]) for c in doc["comparisons"]}
    assert ("grove c=1", "hf c=1") in pairs and ("grove c=2", "with-ids c=2") in pairs
    assert "ratios (above 1" in report and "MISMATCH" not in report

    # compare: B is A with one run's throughput doubled
    other = copy.deepcopy(doc)
    other["runs"][0]["metrics"]["output_throughput"] *= 2
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    assert main(["compare", str(out), str(other_path)]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("grove c=1") and "output tok/s" in ln)
    assert "+100.0%" in line and line.rstrip().endswith("better")

    assert main(["table", str(out), str(other_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| Scenario |") and len(table) == 2 + 2 * 6
    assert "| e2e | humaneval | grove | c=1 |" in table[2] and "x vs hf c=1" in table[2] and table[2].endswith("| yes |")


def _perturbed(hf: HFModel) -> HFModel:
    """The same architecture and tokenizer with its final norm scrambled: a different model."""
    model = copy.deepcopy(hf.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm = model.model.norm.weight
        norm.mul_(1 + torch.randn(norm.shape, generator=gen))
    return HFModel(model, hf.tokenizer, hf.model_dir + " (perturbed)")


def test_greedy_check_fails_on_a_different_baseline(greedy_server, hf_model, tmp_path) -> None:
    different = HFBaseline("hf-perturbed", _perturbed(hf_model))
    with pytest.raises(SmokeFailure, match="greedy mismatch grove c=1 vs hf-perturbed c=1"):
        run_smoke(greedy_server, tmp_path, num_prompts=2, concurrency=(1,), max_tokens=6, hf=hf_model,
                  baseline_objects=[different])
    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert validate_result(doc) == []  # a failed check is still a complete result
    (result,) = doc["greedy_check"]["results"]
    assert doc["greedy_check"]["ok"] is False and result["mismatches"]
    assert all(m["diverged_at"] is not None and "diverged" in m["message"] for m in result["mismatches"])


def test_smoke_passes_on_chat_prompts(greedy_server, hf_model, tmp_path) -> None:
    doc = run_smoke(greedy_server, tmp_path, dataset="sharegpt", num_prompts=2, max_tokens=12, max_prompt_tokens=256,
                    concurrency=(2,), baselines=("hf",), hf=hf_model)
    assert doc["greedy_check"]["ok"] is True and doc["dataset"]["kinds"] == {"completion": 0, "chat": 2}
    for path in doc["plots"].values():
        assert png_problems(path) == []
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    assert png_problems(tmp_path / "broken.png")  # the PNG check can fail

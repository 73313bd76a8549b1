"""``grove serve``: a ``vllm serve`` command line as the launcher's stack. Each kind of vLLM flag
(the launcher's own, a service's, the speculative config, those ignored with a reason, those
refused) lands where it should, read back through the launcher's own parser; the stack it starts is
in tests/pipeline/test_launcher.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.paths import default_model_dir
from launcher.__main__ import parser, stack_config
from launcher.stack import StackConfig
from launcher.vllm_serve import ServeError, main, translate

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _config(args: list[str]) -> tuple[StackConfig, list[str]]:
    t = translate(args)
    return stack_config(parser().parse_args(t.argv)), t.notes


def test_a_vllm_command_line_reaches_the_services_that_take_each_flag() -> None:
    config, notes = _config([
        HUB_ID, "--port", "8123", "--max-model-len", "1024", "--trust-remote-code", "--gpu-memory-utilization", "0.9",
        "--enable-prefix-caching", "--allowed-origins", '["https://ui.example"]', "--enable-log-requests",
        "--max-num-batched-tokens=256", "--block-size", "32", "--root-path", "/grove", "--return-tokens-as-token-ids",
        "--tensor-parallel-size", "1", "--kv-cache-dtype", "auto",
        "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}',
        "--gateway-args", "--max-concurrent 9"])
    assert config.model == str(default_model_dir()) and config.http_port == 8123
    gateway, worker, decode = config.extra_gateway_args, config.extra_worker_args, config.extra_decode_args
    # served under the name it was asked for, as vLLM does
    assert gateway[gateway.index("--served-model-name") + 1] == HUB_ID
    assert worker[worker.index("--served-model-name") + 1] == HUB_ID
    text = " ".join(gateway)
    assert "--allowed-origins" in text and "https://ui.example" in text and "--enable-log-requests" in gateway
    assert "--max-concurrent 9" in text and "--max-model-len 1024" in text
    assert "--root-path /grove --return-tokens-as-token-ids" in text
    assert " ".join(worker).endswith("--max-num-batched-tokens 256 --block-size 32")
    assert "--block-size 32" in text  # the gateway hashes prefixes by the workers' blocks
    assert " ".join(decode).endswith("--lookahead on --lookahead-max-depth 4")
    assert [n.split(":")[0] for n in notes] == ["--trust-remote-code", "--gpu-memory-utilization",
                                                "--enable-prefix-caching"]
    assert all("ignored, " in n for n in notes)


def test_a_local_folder_is_served_under_the_name_given_or_its_path(model_dir: Path) -> None:
    config, _ = _config([str(model_dir)])
    assert config.model == str(model_dir.resolve())
    assert config.extra_gateway_args[config.extra_gateway_args.index("--served-model-name") + 1] == str(model_dir)
    config, _ = _config(["--model", str(model_dir), "--served-model-name", "mine", "other"])
    names = config.extra_gateway_args
    assert names[names.index("--served-model-name"):][:3] == ("--served-model-name", "mine", "other")


@pytest.mark.parametrize("args, named", [
    (["-tp", "2"], "-tp 2"),
    (["--data-parallel-size", "4"], "--data-parallel-size 4"),
    (["--quantization", "awq"], "--quantization awq"),
    (["--kv-cache-dtype", "fp8"], "--kv-cache-dtype fp8"),
    (["--tokenizer", "other/tokenizer"], "--tokenizer other/tokenizer"),
    (["--no-enable-prefix-caching"], "--no-enable-prefix-caching"),
    (["--speculative-config", '{"method": "eagle", "model": "x"}'], "method 'eagle'"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 0}'], "num_speculative_tokens"),
    (["--speculative-config", "{nope"], "not JSON"),
    (["--max-num-batched-tokens"], "--max-num-batched-tokens needs a value"),
    (["--trust-remote-code=yes"], "--trust-remote-code takes no value"),
])
def test_what_grove_cannot_do_is_refused_by_name(args: list[str], named: str) -> None:
    with pytest.raises(ServeError, match="^" + args[0].split("=")[0]) as err:
        translate([HUB_ID, *args])
    assert named in str(err.value)


def test_a_model_neither_local_nor_bundled_is_refused_before_anything_starts(capsys: pytest.CaptureFixture) -> None:
    assert main(["meta-llama/Llama-3.1-8B-Instruct", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "'meta-llama/Llama-3.1-8B-Instruct': no such folder" in err and "nothing downloads" in err
    assert main([HUB_ID, "-tp", "8"]) == 2
    assert "-tp 8: Grove cannot, a worker holds the whole model" in capsys.readouterr().err


def test_a_flag_neither_vllm_nor_grove_knows_is_the_launchers_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([HUB_ID, "--no-such-flag", "1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err

"""``make run``'s launcher (``python -m launcher``) as a user runs it: vLLM's serving flags reach
the services that take them, Ctrl-C stops every process, and a service that dies stops the stack
with its last log lines instead of leaving a half-stack serving errors (a stack started by ``grove
serve``, vLLM's command line)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from launcher.stack import Stack, service_env
from tests.pipeline.gateway_process import ROOT

COPY = "Copy this line twice: the quick brown fox jumps over the lazy dog. " * 3


class Launcher:
    def __init__(self, logs: Path, *args: str, command: tuple[str, ...] = ("-m", "launcher")) -> None:
        self.logs = logs
        self.proc = subprocess.Popen(
            [sys.executable, *command, "--port", "0", "--grpc-port", "0", "--kv-cache-gb", "0.25",
             "--worker-args", "--num-threads 1", "--log-dir", str(logs), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=service_env())
        self.output: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the banner names the URL (port 0: one the gateway picked)
            self.output.append(line)
            found = re.search(r"OpenAI HTTP : (http://\S+)/v1", line)
            if found:
                self.url = found.group(1)
                return
        raise AssertionError("the launcher exited before serving:\n" + "".join(self.output))

    def services(self) -> list[int]:
        """The pids of the stack's processes still running (their command lines name the log dir)."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(self.logs) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        self.output.extend(self.proc.stdout.read().splitlines(keepends=True))
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.services():
            subprocess.run(["kill", "-9", str(pid)], check=False)


@pytest.fixture
def launched(tmp_path: Path, lora_dirs: dict[str, Path]) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path / "logs", "--served-model-name", "grove-test", "grove-alias", "--max-model-len", "512",
                        "--lookahead", "off", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                        "--reasoning-parser", "qwen3", "--enable-lora", "--lora-modules", f"all={lora_dirs['all']}",
                        "--allow-runtime-lora-updating", "--max-lora-rank", "8", "--enable-sleep-mode",
                        "--metrics-names", "vllm",
                        "--weight-transfer-config", '{"backend": "disk"}',
                        "--gateway-args", "--allowed-origins https://ui.example --server-dev-mode")
    yield launcher
    launcher.kill()


def _usage(url: str, body: dict[str, object]) -> dict[str, object]:
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_serving_flags_reach_the_services_and_ctrl_c_stops_them_all(launched: Launcher, stack: Stack,
                                                                    lora_dirs: dict[str, Path]) -> None:
    cards = httpx.get(launched.url + "/v1/models", timeout=10).json()["data"]
    assert [(c["id"], c["max_model_len"], c["parent"]) for c in cards] == [
        ("grove-test", 512, None), ("grove-alias", 512, None), ("all", 512, "grove-test")]
    r = httpx.post(launched.url + "/v1/completions", json={"model": "all", "prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "all", r.text
    r = httpx.post(launched.url + "/v1/load_lora_adapter", json={"lora_name": "qvd", "lora_path": str(lora_dirs["qvd"])},
                   timeout=10)
    assert r.status_code == 200, r.text  # run-time loading allowed, rank 4 within --max-lora-rank 8
    body = {"model": "grove-test", "prompt": COPY, "max_tokens": 24, "temperature": 0}
    answer = httpx.post(launched.url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
    body["prediction"] = {"type": "content", "content": answer}
    # lookahead off: no drafts, not even from a prediction that is the answer, where the package's
    # stack (on) takes it in drafts (a prediction: its own budget may draft nothing from the tries
    # on a loaded machine, and once did)
    assert _usage(stack.http_url, {**body, "model": None})["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    details = _usage(launched.url, body)["completion_tokens_details"]
    assert details == {"accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    r = httpx.post(launched.url + "/v1/completions", json={**body, "prompt": "word " * 600}, timeout=30)
    assert r.status_code == 400 and "512" in r.json()["error"]["message"]
    r = httpx.options(launched.url + "/v1/completions", timeout=10, headers={
        "origin": "https://ui.example", "access-control-request-method": "POST"})
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    tool = {"type": "function", "function": {"name": "f"}}  # "auto" takes the parser (else a 400)
    r = httpx.post(launched.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "auto", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert "reasoning" in r.json()["choices"][0]["message"]  # the reasoning parser's field (null: no thinking)
    assert httpx.get(launched.url + "/is_sleeping", timeout=10).json() == {"is_sleeping": False}  # sleep mode on
    r = httpx.post(launched.url + "/sleep", params={"level": "9"}, timeout=10)
    assert r.status_code == 400 and "level" in r.text, r.text  # (not "sleep mode is off")
    metrics = httpx.get(launched.url + "/metrics", timeout=10).text  # vLLM's names only
    assert 'vllm:time_to_first_token_seconds_count{model_name="grove-test"' in metrics and "grove:" not in metrics
    assert len(launched.services()) == 5  # kvstore, prefill, decode, gateway and the launcher
    launched.proc.send_signal(signal.SIGINT)
    assert launched.wait(60) == 0
    deadline = time.monotonic() + 10
    while launched.services() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert launched.services() == []


def test_a_service_that_dies_stops_the_stack_and_says_which(tmp_path: Path) -> None:
    """Started as a vLLM user would (``grove serve`` with the model's hub id and vLLM's flags: the
    bundled model served under that id, n-gram speculation as lookahead, a flag Grove does without
    said so); then its decode worker dies."""
    launcher = Launcher(tmp_path / "logs", "--trust-remote-code", "--speculative-config",
                        '{"method": "ngram", "num_speculative_tokens": 5}',
                        command=("grove_cli.py", "serve", "HuggingFaceTB/SmolLM2-135M-Instruct"))
    try:
        assert [c["id"] for c in httpx.get(launcher.url + "/v1/models", timeout=10).json()["data"]] == [
            "HuggingFaceTB/SmolLM2-135M-Instruct"]
        assert any("--trust-remote-code: ignored" in line for line in launcher.output)
        pids = launcher.services()
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") for pid in pids]
        [(decode_pid, decode_cmd)] = [(pid, cmd) for pid, cmd in zip(pids, cmdlines)
                                      if any("decode-0.ready" in a for a in cmd)]
        assert " ".join(decode_cmd).count("--lookahead-max-depth 5") == 1
        subprocess.run(["kill", "-9", str(decode_pid)], check=True)
        assert launcher.wait(60) == 1
        assert "['decode-0'] exited; stopping the stack" in "".join(launcher.output)
        deadline = time.monotonic() + 10
        while launcher.services() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launcher.services() == []
    finally:
        launcher.kill()

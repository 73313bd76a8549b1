"""vLLM's ``--generation-config`` / ``--override-generation-config``: the served model's default
sampling parameters (its generation_config.json), which a request's own fields override, over both
APIs' parsers; the defaults' ``max_new_tokens`` caps every request's output, as vLLM's does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.generation_defaults import load_generation_defaults
from gateway.__main__ import parse_args
from gateway.openai_protocol import sampling_from_body
from grove.v1 import api_pb2 as apb
from protocol.pipeline import sampling_from_pb

CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
          "repetition_penalty": 1.1, "max_new_tokens": 64, "transformers_version": "5.23.0"}
DEFAULTS = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.1, "max_tokens": 64}


def _model(tmp_path: Path, config: dict[str, object] | None) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "generation_config.json").write_text(json.dumps(config))
    return d


def test_auto_takes_the_models_sampling_keys_by_groves_names(tmp_path: Path) -> None:
    assert load_generation_defaults(_model(tmp_path, CONFIG)) == DEFAULTS
    assert load_generation_defaults(_model(tmp_path, CONFIG), "vllm") == {}


def test_the_bundled_model_has_no_sampling_defaults(model_dir: Path) -> None:
    assert (model_dir / "generation_config.json").exists()
    assert load_generation_defaults(model_dir) == {}


def test_another_folder_and_overrides(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps({"temperature": 0.2, "min_p": 0.05}))
    model = _model(tmp_path, CONFIG)
    assert load_generation_defaults(model, str(other)) == {"temperature": 0.2, "min_p": 0.05}
    assert load_generation_defaults(model, "auto", '{"temperature": 1, "max_new_tokens": 8}') == \
        {**DEFAULTS, "temperature": 1.0, "max_tokens": 8}
    assert load_generation_defaults(model, "vllm", {"top_k": 5}) == {"top_k": 5}
    assert load_generation_defaults(_model(tmp_path / "bare", None)) == {}


@pytest.mark.parametrize("source, override, says", [
    ("auto", '{"temperature": -1}', "temperature"),
    ("auto", '{"top_p": 1.5}', "top_p"),
    ("auto", '{"max_new_tokens": 0}', "max_tokens"),
    ("auto", "{not json", "not JSON"),
    ("auto", "[1, 2]", "JSON object"),
    ("/nonexistent", "", "no generation_config.json"),
])
def test_a_default_no_request_could_have_is_refused_at_start(tmp_path: Path, source: str, override: str,
                                                              says: str) -> None:
    with pytest.raises(ValueError, match=says):
        load_generation_defaults(_model(tmp_path, CONFIG), source, override)


def test_the_gateway_stops_at_start_on_a_bad_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--prefill", "a:1", "--decode", "b:1", "--model", str(_model(tmp_path, CONFIG))]
    assert parse_args(base).sampling_defaults == DEFAULTS
    with pytest.raises(SystemExit):
        parse_args([*base, "--override-generation-config", '{"temperature": "hot"}'])
    assert "temperature" in capsys.readouterr().err


def test_http_requests_take_the_defaults_and_override_them() -> None:
    chat = sampling_from_body({"messages": []}, chat=True, defaults=DEFAULTS)
    assert (chat.temperature, chat.top_p, chat.top_k, chat.repetition_penalty) == (0.6, 0.95, 20, 1.1)
    assert chat.max_tokens == 64  # chat's own limit (to the context's end) capped by the defaults'
    own = sampling_from_body({"prompt": "x", "temperature": 0, "top_k": -1, "max_tokens": 10}, chat=False,
                             defaults=DEFAULTS)
    assert (own.temperature, own.top_k, own.top_p, own.max_tokens) == (0.0, -1, 0.95, 10)
    assert sampling_from_body({"prompt": "x"}, chat=False, defaults=DEFAULTS).max_tokens == 16  # OpenAI's default
    assert sampling_from_body({"prompt": "x", "max_tokens": 500}, chat=False, defaults=DEFAULTS).max_tokens == 64
    plain = sampling_from_body({"messages": []}, chat=True)
    assert (plain.temperature, plain.top_k, plain.max_tokens) == (1.0, 0, 4096)


def test_grpc_requests_take_the_defaults_and_override_them() -> None:
    p = sampling_from_pb(apb.SamplingParams(), DEFAULTS)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_tokens) == (0.6, 0.95, 20, 1.1, 16)
    p = sampling_from_pb(apb.SamplingParams(temperature=0.0, max_tokens=200, top_k=3), DEFAULTS)
    assert (p.temperature, p.top_k, p.top_p, p.max_tokens) == (0.0, 3, 0.95, 64)
    assert sampling_from_pb(apb.SamplingParams()).temperature == 1.0

"""Shared fixtures: the real model (loaded once) and real HTTP servers for the bench to drive."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hf_openai_server sits next to the tests

from hf_openai_server import EchoSource, HFGreedySource, ServerThread, create_app  # noqa: E402

from bench.baselines import HFModel  # noqa: E402
from engine.paths import default_model_dir  # noqa: E402
from engine.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def hf_model() -> HFModel:
    model_dir = default_model_dir()
    if not (model_dir / "config.json").exists():
        pytest.skip(f"converted model missing at {model_dir}: run `make model`")
    # One torch thread: on 2 cores that other test runs keep busy, two OpenMP threads spin-wait
    # for each other at every op and generate() gets 10-30x slower (measured); one thread does not.
    return HFModel.load(model_dir, threads=1)


@pytest.fixture(scope="session")
def greedy_source(hf_model: HFModel) -> HFGreedySource:
    return HFGreedySource(hf_model.model)


@pytest.fixture(scope="session")
def greedy_server(greedy_source: HFGreedySource, hf_model: HFModel) -> Iterator[str]:
    """transformers greedy generation behind a real OpenAI-compatible HTTP server (text only)."""
    with ServerThread(create_app(greedy_source, hf_model.tokenizer)) as server:
        yield server.url


@pytest.fixture(scope="session")
def greedy_server_with_ids(greedy_source: HFGreedySource, hf_model: HFModel) -> Iterator[str]:
    """The same generation, also streaming ``token_ids`` in each chunk (as vLLM can)."""
    with ServerThread(create_app(greedy_source, hf_model.tokenizer, emit_token_ids=True)) as server:
        yield server.url


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The bundled model's tokenizer alone (no model weights): cheap."""
    model_dir = default_model_dir()
    if not (model_dir / "config.json").exists():
        pytest.skip(f"converted model missing at {model_dir}: run `make model`")
    return load_tokenizer(model_dir)


@pytest.fixture()
def echo(tokenizer: Any) -> Iterator[tuple[str, EchoSource]]:
    """A fresh echo server (prompt tokens streamed back every 10 ms) and its source, for load tests."""
    source = EchoSource(delay_s=0.01)
    with ServerThread(create_app(source, tokenizer)) as server:
        yield server.url, source

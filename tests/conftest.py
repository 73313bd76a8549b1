"""Shared fixtures: the real bundled model (converted once into the cache), transformers beside it."""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# `make test` runs two pytest workers (pytest-xdist, scripts/test.sh) on this 2-core machine: one
# torch thread each keeps both cores busy without oversubscribing them
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
logging.basicConfig(level=logging.INFO)
# step-cost calibrations the tests take (beside other tests: slowed) stay out of the user's cache;
# one directory per run, shared by the pytest workers and the stacks they start (set here, before
# pytest-xdist starts the workers, which inherit it)
if "GROVE_STEP_COST_CACHE" not in os.environ:
    os.environ["GROVE_STEP_COST_CACHE"] = _step_costs = tempfile.mkdtemp(prefix="grove-test-step-cost-")
    atexit.register(shutil.rmtree, _step_costs, True)
# the same for transformers' reference outputs (HFReference), which the workers share
if "GROVE_TEST_HF_REFERENCES" not in os.environ:
    os.environ["GROVE_TEST_HF_REFERENCES"] = _references = tempfile.mkdtemp(prefix="grove-test-hf-reference-")
    atexit.register(shutil.rmtree, _references, True)

# Packages whose tests start whole stacks as processes (kvstore, workers, gateway: ~6 GB each in fp32)
STACK_PACKAGES = ("pipeline", "observability")


def _group(nodeid: str) -> str:
    """The worker group of a test under pytest-xdist: "stacks" for every test that starts a stack
    (one worker runs them all, so two stacks never hold memory at once and each package-scoped
    stack starts once), else its file (its module fixtures are built once)."""
    path = nodeid.split("::", 1)[0]
    return "stacks" if Path(path).parent.name in STACK_PACKAGES else path


class _GroupScheduling:
    """pytest-xdist plugin: schedules by ``_group``. (xdist's own ``--dist loadgroup`` renames node
    ids, which pytest 9 no longer lets a plugin do.)"""

    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        from xdist.scheduler import LoadScopeScheduling

        class GroupScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _group(nodeid)

        return GroupScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_GroupScheduling(), "grove-group-scheduling")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The stack tests first (stable otherwise): they are the longest group, and under pytest-xdist
    (scripts/test.sh, ``--no-loadscope-reorder``) the other worker works through the rest meanwhile."""
    items.sort(key=lambda item: _group(item.nodeid) != "stacks")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from engine.convert import convert_smollm2

    return convert_smollm2()


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    from engine.convert import convert_qwen

    return convert_qwen()


@pytest.fixture(scope="session")
def hf_model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Any:
    from engine.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> Any:
    """One real engine on the bundled model for the session (tests must leave it idle)."""
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=512))
    yield eng
    assert not eng.has_work, "a test left requests running in the shared engine"
    eng.allocator.check_integrity()
    assert eng.allocator.num_used == 0, "a test leaked KV blocks"


class HFReference:
    """transformers greedy outputs, computed once per (prompt, length) in the run; ``many`` computes
    the missing ones of a list in left-padded batches (engine.reference.hf_greedy_batch). Under
    pytest-xdist the workers share them through files in ``cache_dir`` (one per batch, made under a
    lock: a worker that needs a batch another is computing waits for it), so the pipeline tests and
    the engine tests, on different workers, take the same references without computing them twice."""

    def __init__(self, load_model: Callable[[], Any], model_dir: Path, cache_dir: Path | None,
                 batch_size: int = 10) -> None:
        self.load_model = load_model
        self.model_dir = model_dir
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.memo: dict[tuple[tuple[int, ...], int], Any] = {}

    def __call__(self, prompt_ids: list[int], max_new_tokens: int) -> Any:
        return self.many([prompt_ids], max_new_tokens)[0]

    def many(self, prompts: list[list[int]], max_new_tokens: int) -> list[Any]:
        missing = sorted({tuple(p) for p in prompts if (tuple(p), max_new_tokens) not in self.memo}, key=len)
        for i in range(0, len(missing), self.batch_size):  # similar lengths together: little padding
            chunk = missing[i : i + self.batch_size]
            for p, ref in zip(chunk, self._batch(chunk, max_new_tokens)):
                self.memo[(p, max_new_tokens)] = ref
        return [self.memo[(tuple(p), max_new_tokens)] for p in prompts]

    def _batch(self, chunk: list[tuple[int, ...]], max_new_tokens: int) -> list[Any]:
        from engine.reference import ReferenceOutput, hf_greedy_batch

        if self.cache_dir is None:
            return hf_greedy_batch(self.load_model(), chunk, max_new_tokens)
        key = hashlib.sha256(repr((str(self.model_dir), chunk, max_new_tokens)).encode()).hexdigest()[:32]
        path = self.cache_dir / f"{key}.json"
        with open(self.cache_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not path.exists():
                refs = hf_greedy_batch(self.load_model(), chunk, max_new_tokens)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps([[r.tokens, r.top2_gaps, r.top1_ulps] for r in refs]))
                tmp.replace(path)
            return [ReferenceOutput(*r) for r in json.loads(path.read_text())]


@pytest.fixture(scope="session")
def hf_reference(request: pytest.FixtureRequest, model_dir: Path) -> HFReference:
    """transformers loads only where a reference is not yet in this run's files."""
    return HFReference(lambda: request.getfixturevalue("hf_model"), model_dir,
                       Path(os.environ["GROVE_TEST_HF_REFERENCES"]))


@pytest.fixture(scope="session")
def lora_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two PEFT adapters of the bundled model: "all" on every projection (rank 8), and "qvd" on
    q, v and down only (rank 4, rsLoRA, its own alpha for down_proj)."""
    from tests.lora_adapters import make_adapter

    root = tmp_path_factory.mktemp("lora")
    return {"all": make_adapter(model_dir, root / "all", seed=1, b_scale=0.5),
            "qvd": make_adapter(model_dir, root / "qvd", seed=2, r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"),
                                use_rslora=True, alpha_pattern={"down_proj": 4})}

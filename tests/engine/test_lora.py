"""LoRA adapters in the engine: each request's output equals PEFT's greedy output with its adapter
(token for token, lookahead on, base and adapters in one batch), an adapter's KV is its own in the
prefix cache, and adapters Grove cannot serve are refused by name."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.lookahead.speculator as speculator_mod
from engine.config import ModelConfig
from engine.errors import InvalidRequestError
from engine.lookahead.budget import FreeWideSteps
from engine.lora.adapter import adapter_digest, load_adapter
from engine.lora.registry import LoraRegistry
from engine.request import LoraRef
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template
from tests.lora_adapters import make_adapter, peft_greedy

MAX_TOKENS = 24  # (each adapter changes an answer and the copy prompt drafts within it; 40 cost 40% more)
COPY = ("Repeat this list exactly: apples, pears, plums, cherries, apricots, peaches, grapes, lemons, limes, "
        "oranges, melons, figs, dates, kiwis, mangoes, papayas.")


def _ref(name: str, path: Path) -> LoraRef:
    return LoraRef(name, str(path), adapter_digest(path))


def _run(engine: Any, jobs: list[tuple[list[int], LoraRef | None]], max_tokens: int = MAX_TOKENS) -> list[Any]:
    seqs = []
    for i, (ids, lora) in enumerate(jobs):
        seq = engine.make_sequence(f"lora-{i}-{len(engine.seqs)}", ids, SamplingParams(max_tokens=max_tokens,
                                                                                     temperature=0.0), lora=lora)
        engine.add_sequence(seq)
        seqs.append(seq)
    while engine.has_work:
        engine.step()
    return seqs


def test_adapters_decode_as_peft_does_beside_the_base_model(engine: Any, model_dir: Path, tokenizer: Any,
                                                            lora_dirs: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Base, "all" and "qvd" requests of three prompts in one continuous batch (lookahead on: the
    copy prompt drafts), each equal to transformers + PEFT greedy with its adapter. The engine is
    told that wide steps are free, so that it drafts whatever it can whatever the machine's load
    (this checks verification with adapters, not the budget)."""
    monkeypatch.setattr(engine.speculator, "cost", FreeWideSteps())
    monkeypatch.setattr(speculator_mod, "PROBES_PER_SOURCE", 10**9)
    prompts = [apply_chat_template(tokenizer, [{"role": "user", "content": text}])
               for text in ("Write a haiku about trees.", "What is the capital of France?", COPY)]
    refs = {name: _ref(name, path) for name, path in lora_dirs.items()}
    jobs = [(ids, lora) for ids in prompts for lora in (None, refs["all"], refs["qvd"])]
    seqs = _run(engine, jobs)
    expected = {name: peft_greedy(model_dir, path, prompts, MAX_TOKENS) for name, path in
                (("base", None), *lora_dirs.items())}
    for i, seq in enumerate(seqs):
        name = ["base", "all", "qvd"][i % 3]
        assert seq.output_ids == expected[name][i // 3], (name, i // 3)
    for name in lora_dirs:  # each adapter changes some answer: the test sees it applied
        assert expected[name] != expected["base"], name
    copying = [s for s, (_, lora) in zip(seqs, jobs) if lora is not None and s.prompt_ids == prompts[2]]
    assert all(s.num_draft_tokens > 0 for s in copying), "lookahead drafted for the adapters' requests"
    assert engine.allocator.num_used == 0


def test_an_adapter_keeps_its_own_prefix_cache(engine: Any, tokenizer: Any, lora_dirs: dict[str, Path]) -> None:
    """KV computed with an adapter is found only by requests with that adapter, and the base
    model's only by the base model's."""
    ids = tokenizer(f"{uuid.uuid4()}: name three rivers of Europe. " * 4)["input_ids"]  # cached by no other test
    assert len(ids) >= 3 * engine.config.block_size
    a, q = _ref("all", lora_dirs["all"]), _ref("qvd", lora_dirs["qvd"])
    order = [None, a, a, q, None]
    cached = [_run(engine, [(ids, lora)], max_tokens=2)[0].num_cached_prompt for lora in order]
    assert cached[0] == 0
    assert cached[1] == 0, "the adapter read the base model's KV"
    assert cached[2] > 0, "the adapter's own prefix was not found again"
    assert cached[3] == 0, "one adapter read another's KV"
    assert cached[4] > 0


def test_a_client_salt_cannot_name_an_adapters_cache(engine: Any) -> None:
    with pytest.raises(InvalidRequestError, match="cache_salt"):
        engine.make_sequence("salted", [1, 2, 3], SamplingParams(max_tokens=1), cache_salt="\0lora:x\0")


def _edit_config(path: Path, **changes: Any) -> Path:
    cfg_file = path / "adapter_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **changes}))
    return path


@pytest.mark.parametrize("case, message", [
    ("rank", "rank 8 is above the server's --max-lora-rank 4"),
    ("lm_head", "is not on an attention or MLP projection"),
    ("dora", "DoRA is not supported"),
    ("missing", "no such directory"),
    ("no_config", "no adapter_config.json"),
    ("prefix", "peft_type 'PREFIX_TUNING' is not LoRA"),
])
def test_adapters_grove_cannot_serve_are_refused_by_name(model_dir: Path, lora_dirs: dict[str, Path],
                                                         tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "adapter"
    max_rank = 16
    if case == "rank":
        path, max_rank = lora_dirs["all"], 4
    elif case == "lm_head":
        make_adapter(model_dir, path, seed=3, targets=("q_proj", "lm_head"))
    elif case == "missing":
        path = tmp_path / "nothing-here"
    else:
        shutil.copytree(lora_dirs["qvd"], path)
        if case == "dora":
            _edit_config(path, use_dora=True)
        elif case == "no_config":
            (path / "adapter_config.json").unlink()
        else:
            _edit_config(path, peft_type="PREFIX_TUNING")
    with pytest.raises(InvalidRequestError, match="lora") as e:
        load_adapter(path, ModelConfig.from_dir(model_dir), torch.float32, "cpu", max_rank)
    assert message in str(e.value) and str(path) in str(e.value)


def test_an_adapter_changed_since_it_was_named_is_refused(model_dir: Path, lora_dirs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """The gateway names an adapter by its files' digest; a worker that finds other files there
    refuses the request rather than serve (and cache) another adapter's KV under that name."""
    path = shutil.copytree(lora_dirs["qvd"], tmp_path / "adapter")
    ref = _ref("mine", path)
    registry = LoraRegistry(ModelConfig.from_dir(model_dir), torch.float32, "cpu", capacity=1)
    assert registry.get(ref).digest == ref.digest
    _edit_config(path, lora_alpha=9)
    registry.get(_ref("other", lora_dirs["all"]))  # capacity 1: "mine" is dropped, read again next time
    assert len(registry) == 1
    with pytest.raises(InvalidRequestError, match="changed since 'mine' was registered"):
        registry.get(ref)


def test_max_loras_holds_back_requests_of_another_adapter() -> None:
    """vLLM's --max-loras: with one adapter running, a request of another waits (those after it,
    of the running adapter or the base model, go on) until the running adapter's requests end."""
    from engine.block_allocator import BlockAllocator
    from engine.lora.adapter import LoraAdapter
    from engine.scheduler import Scheduler, SchedulerConfig
    from engine.sequence import Sequence

    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256, block_size=16, max_loras=1),
                      BlockAllocator(64))
    a, b = LoraAdapter("a" * 64, 8, ()), LoraAdapter("b" * 64, 8, ())
    seqs = {name: Sequence(name, [100 + i] * 20, SamplingParams(), seed=0, detok=None, max_len=1000,  # type: ignore[arg-type]
                           lora=lora) for i, (name, lora) in enumerate((("a1", a), ("b1", b), ("base", None), ("a2", a)))}
    for seq in seqs.values():
        sched.add(seq)
    assert [s.seq.request_id for s in sched.schedule()] == ["a1", "base", "a2"]
    assert [s.request_id for s in sched.waiting] == ["b1"]
    for name in ("a1", "a2"):
        sched.remove(seqs[name])
    assert "b1" in [s.seq.request_id for s in sched.schedule()] and not sched.waiting

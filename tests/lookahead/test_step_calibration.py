"""The step-cost model's start (engine.step_calibration): what it times in a pool of each size,
and the timings kept for a later start with the same setup (engine.step_cost_cache)."""
from __future__ import annotations

import logging

from engine.engine_config import EngineConfig
from engine.lookahead.budget import StepCostModel


def test_calibration_in_a_small_pool_keeps_the_token_curve(model_dir) -> None:
    """An engine whose pool cannot hold the long calibration context (16 blocks of 16 tokens) still
    times query tokens behind 64, as wide as the pool holds (128 of the 256 a plan may take), and
    prices no key reads rather than guessing."""
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=16, calibration_cache=False))
    assert eng.speculator.max_step_tokens == 256
    assert sorted(eng.speculator.cost.points) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert eng.speculator.cost.per_key_read == 0.0
    assert eng.speculator.cost.per_context_key == 0.0
    assert eng.allocator.num_free == 16  # calibration gave its blocks back


def test_a_second_start_with_the_same_setup_takes_the_kept_calibration(model_dir, tmp_path, monkeypatch,
                                                                         caplog) -> None:
    """The first engine times its steps and keeps them under $GROVE_STEP_COST_CACHE; a second one
    with the same setup takes them without timing; another block size (another setup) times again;
    --calibration-cache off always times; so does a start after a CPU kernel's source changed."""
    from engine.llm_engine import LLMEngine

    from engine import step_cost_cache

    monkeypatch.setenv("GROVE_STEP_COST_CACHE", str(tmp_path / "step-cost"))
    # timed beside the other pytest worker, a calibration may look disturbed and not be kept: that
    # guard has its own test (test_a_disturbed_calibration_is_not_kept); this one is about reuse
    monkeypatch.setattr(step_cost_cache, "disturbed", lambda cost: False)

    def start(**kw: object) -> tuple[str, dict]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="engine.step_calibration"):
            # steps timed to 64 tokens (not 128): five starts, and the test is about what is kept
            eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=16, lookahead_max_step_tokens=64, **kw))
        how = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("step cost"))
        return how, dict(eng.speculator.cost.points)

    how, first = start()
    assert how.startswith("step cost (measured)")
    assert len(list((tmp_path / "step-cost").glob("*.json"))) == 1
    how, second = start()
    assert how.startswith("step cost (kept from an earlier start)")
    assert second == first
    assert start(block_size=32)[0].startswith("step cost (measured)")
    assert start(calibration_cache=False)[0].startswith("step cost (measured)")
    assert len(list((tmp_path / "step-cost").glob("*.json"))) == 2
    # a changed kernel source changes the step's cost: the kept calibration is not taken
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    for src in [*step_cost_cache.KERNEL_SOURCES.glob("*.cpp"), *step_cost_cache.KERNEL_SOURCES.glob("*.h")]:
        (kernels / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(step_cost_cache, "KERNEL_SOURCES", kernels)
    assert start()[0].startswith("step cost (kept from an earlier start)")  # the same sources
    with (kernels / "cpu_linear.cpp").open("a") as f:
        f.write("// changed\n")
    assert start()[0].startswith("step cost (measured)")


def test_a_disturbed_calibration_is_not_kept(tmp_path, monkeypatch) -> None:
    """A calibration whose narrow steps timed slower than wide ones (something ran beside it) is
    not kept for later starts; a steady one is."""
    from engine import step_cost_cache

    monkeypatch.setenv("GROVE_STEP_COST_CACHE", str(tmp_path))
    for name, ms in (("disturbed", {1: 78.3, 4: 55.9, 16: 143.3, 32: 95.1, 64: 141.3}),
                     ("steady", {1: 28.2, 2: 29.5, 4: 28.0, 8: 29.1, 16: 28.6, 32: 38.1, 64: 64.5})):
        cost = StepCostModel()
        for n, t in ms.items():
            cost.observe(n, t / 1e3)
        step_cost_cache.store(name, cost, {})
        kept = StepCostModel()
        assert step_cost_cache.load(name, kept) == (name == "steady")
        if name == "steady":
            assert kept.points == cost.points


def test_calibration_prices_the_context_stream_where_the_pool_holds_it(model_dir) -> None:
    """With room for CONTEXT_SEQS sequences behind the long context, the engine times them against
    the short one and prices a cached key (8 x 1,024 keys against 8 x 64: tens of ms apart), then
    gives the blocks back."""
    from engine.llm_engine import LLMEngine
    from engine.step_calibration import CONTEXT_SEQS, calibrate

    blocks = CONTEXT_SEQS * -(-(1024 + 32) // 16) + 8
    # bf16, the CPU serving dtype, where the stream stands clear of the key reads (2.3 against 0.6
    # us a key on an Intel Xeon). In fp32 on one thread the two came within noise of each other
    # (2.2 us a key read) and a run beside another pytest worker priced the stream at 0.
    # Timings beside another pytest worker still priced it at 0 in 1 of 3 runs (a slowed long-context
    # key read swallowed it): up to three calibrations, as a noisy start would take; with the
    # pricing switched off every one gives 0.
    eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=blocks, calibration_cache=False))
    for _ in range(2):
        if eng.speculator.cost.per_context_key > 0.0:
            break
        calibrate(eng)
    assert eng.speculator.cost.per_context_key > 0.0
    assert eng.allocator.num_free == blocks
    # the token curve reaches the widest step a plan may take: past it, steps would be extrapolated
    assert max(eng.speculator.cost.points) == eng.speculator.max_step_tokens == 256

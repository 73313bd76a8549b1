"""Stop conditions, incremental detokenization, block accounting and preemption on the real engine."""
from __future__ import annotations

import random
from typing import Any

from engine.block_allocator import BlockAllocator
from engine.detokenizer import Detokenizer, text_decoder
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from engine.sequence import Sequence, SeqStatus


def test_incremental_text_equals_full_decode(tokenizer: Any) -> None:
    text = "naïve café — 東京 🌲 def f(x):\n    return x ** 2  # ok"
    ids = tokenizer(text)["input_ids"]
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=10_000), eos_ids=())
    streamed = ""
    for t in ids:
        assert d.append(t) is None
        streamed += d.take_delta(False)
    streamed += d.take_delta(True)
    assert streamed == tokenizer.decode(ids) == d.text


def test_the_rust_decode_gives_transformers_text(tokenizer: Any, monkeypatch: Any) -> None:
    """The detokenizer's decode calls the Rust tokenizer directly for the bundled model's tokenizer
    (it works with transformers' ``decode`` broken) and gives its text for any ids: special tokens
    kept or skipped, cut multi-byte characters; another tokenizer goes through its ``decode``."""
    rng = random.Random(7)
    text = "<|im_start|>user\nnaïve café — 東京 🌲<|im_end|>\n def f(x):\n    return x ** 2"
    ids = tokenizer(text)["input_ids"]
    windows = [ids[i:j] for i in range(len(ids)) for j in range(i, min(i + 8, len(ids)) + 1)]
    windows += [[rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 8))] for _ in range(300)]
    expected = {skip: [tokenizer.decode(w, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
                       for w in windows] for skip in (False, True)}
    assert any("\ufffd" in t for t in expected[True]) and expected[True] != expected[False]  # the cases are there

    def broken(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("transformers' decode was called")

    monkeypatch.setattr(tokenizer, "decode", broken)
    for skip in (False, True):
        assert [text_decoder(tokenizer, skip)(w) for w in windows] == expected[skip]

    class Other:
        def decode(self, ids: list[int], skip_special_tokens: bool, clean_up_tokenization_spaces: bool) -> str:
            return f"{ids} {skip_special_tokens} {clean_up_tokenization_spaces}"

    assert text_decoder(Other(), True)([1, 2]) == "[1, 2] True False"


def _run(d: Detokenizer, ids: list[int]) -> tuple[str, str | None]:
    """Streams ``ids`` through ``d`` until one ends it: (text handed out, finish reason)."""
    streamed, reason = "", None
    for t in ids:
        reason = d.append(t)
        streamed += d.take_delta(reason is not None)
        if reason:
            break
    return streamed, reason


def test_stop_string_truncates_and_holds_back(tokenizer: Any) -> None:
    ids = tokenizer("alpha beta STOP gamma")["input_ids"]
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop=("STOP",)), eos_ids=())
    assert _run(d, ids) == ("alpha beta ", "stop") and d.text == "alpha beta "


def test_finish_reasons(engine: Any) -> None:
    prompt = engine.tokenizer("Count: 1, 2, 3,")["input_ids"]
    out = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.output_ids) == 5
    first = out.output_ids[0]
    stopped = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=5, stop_token_ids=(first,)))[0]
    assert stopped.finish_reason == "stop" and stopped.output_ids == [first]


def test_context_limit_ends_with_length(model_dir: Any) -> None:
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=8, max_model_len=40))
    out = eng.generate([list(range(100, 130))], SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))[0]
    assert out.finish_reason == "length"
    assert len(out.prompt_ids) + len(out.output_ids) == 40
    assert eng.allocator.num_used == 0


def test_preemption_under_block_pressure_keeps_outputs_exact(model_dir: Any) -> None:
    """Too few blocks for everyone: the newest is preempted and recomputed; outputs unchanged.

    In bf16, whose forward here is row-invariant (a token's bits do not depend on what shares its
    step): a recomputed sequence's tokens come back as one prompt chunk, and the two engines'
    lookahead drafts differently (each plans from its own step timings). In fp32, where the
    products are not row-invariant on this CPU, that once flipped a near tie of these random
    prompts in a loaded make test."""
    rng = random.Random(5)
    prompts = [[rng.randrange(100, 40000) for _ in range(20)] for _ in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    roomy = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=64))
    tight = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=9))  # 4 x 50 tokens need 16
    a = [o.output_ids for o in roomy.generate(prompts, params)]
    b = [o.output_ids for o in tight.generate(prompts, params)]
    assert a == b
    assert tight.scheduler.num_preemptions > 0 and roomy.scheduler.num_preemptions == 0
    tight.allocator.check_integrity()
    assert tight.allocator.num_used == 0


def test_a_waiting_sequence_gives_back_the_blocks_it_holds_when_a_prefill_needs_them(model_dir: Any) -> None:
    """A prefill worker's request waits holding blocks it took before the scheduler saw it (its
    locally cached prefix, blocks read from the kvstore), while a prompt part-way through its
    chunked prefill needs more blocks than are free. The waiting one gives its blocks back (they
    stay in the prefix cache) instead of both waiting for ever; outputs unchanged."""
    rng = random.Random(3)
    a = [rng.randrange(1000, 20000) for _ in range(300)]  # 19 blocks
    c = [rng.randrange(1000, 20000) for _ in range(500)]  # 32 blocks
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    roomy = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=128, lookahead=False))
    want = [o.output_ids for o in roomy.generate([a, c], params)]
    tight = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=40,
                                   max_num_batched_tokens=128, lookahead=False))
    tight.generate([a], params)  # a's prefix now in the local cache
    seq_c = tight.add_request("c", c, params)
    tight.step()  # c: 128 of 500 prompt tokens, 8 blocks
    seq_a = tight.make_sequence("a", a, params)
    tight.scheduler.reuse_prefix(seq_a)  # as the prefill worker does before it hands a sequence over
    assert len(seq_a.block_table) == 18 and tight.allocator.num_free == 14  # c needs 24 more
    tight.add_sequence(seq_a)
    for _ in range(100):
        if not tight.has_work:
            break
        tight.step()
    assert not tight.has_work, "the two wait for each other's blocks"
    assert [seq_a.output_ids, seq_c.output_ids] == want
    tight.allocator.check_integrity()
    assert tight.allocator.num_used == 0


def test_priority_orders_admission_and_ties_keep_arrival(model_dir: Any) -> None:
    """vLLM's priority: with room for one sequence at a time, the waiting ones start lowest value
    first, equal ones in the order they came."""
    eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=64, max_num_seqs=1,
                                 lookahead=False))
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    seqs = [eng.add_request(f"r{i}", [100 + i] * 8, params, priority=p) for i, p in enumerate((2, 0, 1, 0))]
    started: list[str] = []
    while eng.has_work:
        eng.step()
        started += [s.request_id for s in seqs if s.output_ids and s.request_id not in started]
    assert started == ["r1", "r3", "r2", "r0"]


def test_preemption_takes_the_lowest_priority_first(model_dir: Any, monkeypatch: Any) -> None:
    """Out of blocks, the sequence preempted is the newest of the lowest priority (the highest
    value), not simply the newest; outputs stay those of a roomy run."""
    rng = random.Random(5)
    prompts = [[rng.randrange(100, 40000) for _ in range(20)] for _ in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    roomy = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=64))
    tight = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=9))
    victims: list[str] = []
    preempt = tight.scheduler._preempt
    monkeypatch.setattr(tight.scheduler, "_preempt", lambda seq: (victims.append(seq.request_id), preempt(seq)))
    seqs = [tight.add_request(f"r{i}", p, params, priority=1 if i == 0 else 0) for i, p in enumerate(prompts)]
    while tight.has_work:
        tight.step()
    assert victims and victims[0] == "r0", victims  # FCFS would take r3, the newest
    assert [s.output_ids for s in seqs] == [o.output_ids for o in roomy.generate(prompts, params)]
    assert tight.allocator.num_used == 0


def test_abort_frees_blocks(engine: Any) -> None:
    engine.add_request("to-abort", list(range(100, 180)), SamplingParams(max_tokens=50))
    engine.step()
    assert engine.allocator.num_used > 0
    assert engine.abort("to-abort")
    assert engine.allocator.num_used == 0 and not engine.has_work
    assert not engine.abort("to-abort")


def test_allocator_refcounts() -> None:
    a = BlockAllocator(4)
    x = a.allocate(3)
    a.share(x[:2])
    assert a.free(x) == [x[2]]
    assert a.free(x[:2]) == x[:2]
    a.check_integrity()
    assert a.num_free == 4


def test_stop_reason_names_what_stopped_it(tokenizer: Any) -> None:
    """vLLM's stop_reason: the stop string matched (the earliest-starting of several), the
    stop_token_ids token, or None for the model's own end-of-sequence token."""
    ids = tokenizer("alpha beta STOP gamma")["input_ids"]
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop=("gamma", "STOP", "beta STOP")), eos_ids=())
    assert _run(d, ids) == ("alpha ", "stop") and d.stop_reason == "beta STOP"
    eos = tokenizer.eos_token_id
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop_token_ids=(ids[1],)), eos_ids=(eos,))
    assert _run(d, ids) == ("alpha", "stop") and d.stop_reason == ids[1]
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop_token_ids=(ids[1],)), eos_ids=(eos,))
    assert _run(d, [ids[0], eos]) == ("alpha", "stop") and d.stop_reason is None
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=2), eos_ids=(eos,))
    assert _run(d, ids) == ("alpha beta", "length") and d.stop_reason is None


def test_stop_string_kept_with_include_stop_str_in_output(tokenizer: Any) -> None:
    ids = tokenizer("alpha beta STOP gamma")["input_ids"]
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop=("STOP",), include_stop_str_in_output=True), eos_ids=())
    assert _run(d, ids) == ("alpha beta STOP", "stop") and d.text == "alpha beta STOP"


def test_stops_wait_for_min_tokens(tokenizer: Any) -> None:
    """A stop string completed within the first min_tokens tokens and a stop token there do not
    end the sequence (vLLM's rule); after min_tokens they do."""
    ids = tokenizer("STOP alpha beta STOP gamma")["input_ids"]
    assert tokenizer.decode(ids[:1]) == "STOP"  # the first token completes a stop string
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop=("STOP",), min_tokens=2), eos_ids=())
    assert _run(d, ids) == ("STOP alpha beta ", "stop")
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, stop=("STOP",)), eos_ids=())
    assert _run(d, ids) == ("", "stop")
    eos = tokenizer.eos_token_id
    d = Detokenizer(tokenizer, SamplingParams(max_tokens=100, min_tokens=2), eos_ids=(eos,))
    assert d.append(eos) is None and d.append(ids[0]) is None and d.append(eos) == "stop"


def test_special_tokens_in_text_unless_skipped(tokenizer: Any) -> None:
    ids = tokenizer("<|im_start|>user")["input_ids"]
    kept = Detokenizer(tokenizer, SamplingParams(max_tokens=100, skip_special_tokens=False), eos_ids=())
    skipped = Detokenizer(tokenizer, SamplingParams(max_tokens=100), eos_ids=())
    assert _run(kept, ids)[0] == "<|im_start|>user"
    assert _run(skipped, ids)[0] == "user"


def test_a_resumed_sequence_goes_on_as_the_whole_one_did(model_dir: Any) -> None:
    """``make_sequence(resume_ids=...)``, what a prefill worker does for a request whose decode
    worker was lost: from any point, the rest of the output (tokens and streamed text) is what the
    uninterrupted run gave, with sampling (seeded) and a stop string alike; the text the client
    already has is not sent again."""
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=128, lookahead=False))
    prompt = eng.tokenizer("Once upon a time, in a small village,")["input_ids"]
    for params in (SamplingParams(max_tokens=24, temperature=0.0, stop=(" the end",)),
                   SamplingParams(max_tokens=24, temperature=0.9, seed=3, stop=("zzz",))):
        whole = eng.add_request("whole", prompt, params)
        text, streamed = "", {0: ""}  # the text streamed once so many tokens were out
        while eng.has_work:
            text += "".join(o.delta_text for o in eng.step())
            streamed[len(whole.output_ids)] = text
        assert whole.finish_reason == "length"
        for k in (1, 7, 23):
            seq = eng.make_sequence(f"resumed-{k}", prompt, params, resume_ids=whole.output_ids[:k])
            seq.seed = whole.seed
            sent = seq.detok.text[: seq.detok.emitted]
            eng.add_sequence(seq)
            rest = ""
            while eng.has_work:
                rest += "".join(o.delta_text for o in eng.step())
            assert sent == streamed[k], k  # what the client has: not sent again
            assert seq.output_ids == whole.output_ids and seq.finish_reason == "length", k
            assert sent + rest == text, k


def _decoding(sched: Scheduler, rid: str, num_tokens: int, priority: int = 0) -> Sequence:
    """A running sequence whose tokens but the last have their KV in its blocks (it decodes next)."""
    seq = Sequence(rid, list(range(100, 100 + num_tokens - 1)), SamplingParams(temperature=0.0), seed=0,
                   detok=None, max_len=1000, priority=priority)  # type: ignore[arg-type]
    seq.all_ids.append(7)  # its first output token
    seq.num_cached = num_tokens - 1
    seq.block_table = sched.allocator.allocate(-(-seq.num_cached // sched.config.block_size))
    sched.add_running(seq)
    return seq


def _check_owned(sched: Scheduler, scheduled: list[ScheduledSeq]) -> None:
    """Every scheduled sequence still runs and holds, alone, the blocks its step writes into."""
    seen: set[int] = set()
    for s in scheduled:
        assert s.seq.status is SeqStatus.RUNNING, f"{s.seq.request_id} was scheduled, then preempted"
        need = -(-(s.seq.num_cached + s.num_tokens) // sched.config.block_size)
        blocks = s.seq.block_table[:need]
        assert len(blocks) == need and all(sched.allocator.refcount(b) == 1 for b in blocks)
        assert not seen & set(blocks), "two sequences write into one block"
        seen |= set(blocks)


def test_a_drafted_sequence_preempted_and_recomputed_in_the_same_step_gets_no_draft() -> None:
    """B is preempted for A's room, then scheduled again in the same step to compute its 4 tokens
    once more: a chunk as long as its dropped draft's step (1 + 3 tokens). The chunk is its tokens,
    not its draft: on a loaded 1 + 1 stack with lookahead, the engine verified the draft's tree in
    the chunk's place, and the request's greedy output diverged."""
    sched = Scheduler(SchedulerConfig(block_size=4), BlockAllocator(4))
    a = _decoding(sched, "a", 7)  # 6 cached: 2 blocks, 3 with a 2-token draft
    b = _decoding(sched, "b", 4)  # 3 cached: 1 block, 2 with a 3-token draft
    scheduled = sched.schedule({"a": 2, "b": 3})
    assert sched.num_preemptions == 1
    got = {s.seq.request_id: (s.num_tokens, s.num_draft_tokens) for s in scheduled}
    assert got == {"a": (3, 2), "b": (4, 0)}, got
    assert b.num_cached == 0 and a.num_cached == 6
    _check_owned(sched, scheduled)


def test_a_victim_scheduled_earlier_in_the_step_leaves_the_step() -> None:
    """A (priority 5) decodes first; B (priority 0, newer) then needs a block, and A is the victim.
    A's blocks are gone: its place in the step must go too, or its token would be computed without
    its KV (and B's new block could be A's old one)."""
    sched = Scheduler(SchedulerConfig(block_size=4), BlockAllocator(2))
    a = _decoding(sched, "a", 4, priority=5)  # 3 cached: its next token fits its block
    _decoding(sched, "b", 4)  # its 1-token draft needs a second block
    scheduled = sched.schedule({"b": 1})
    assert sched.num_preemptions == 1 and a.status is SeqStatus.WAITING
    assert [(s.seq.request_id, s.num_tokens, s.num_draft_tokens) for s in scheduled] == [("b", 2, 1)]
    _check_owned(sched, scheduled)

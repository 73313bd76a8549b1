"""The outputs-match check: token alignment of server text, EOS handling, near ties."""
from __future__ import annotations

from bench.greedy_check import align_text, candidate_tokens, check_run
from bench.records import Job, Prompt, RequestRecord
from engine.reference import ReferenceOutput

EOS = 2


def _record(i: int, text: str = "", ids: list[int] | None = None, finish: str = "length", error: str | None = None) -> RequestRecord:
    return RequestRecord(job_index=i, prompt_id=f"p{i}", prompt_tokens=1, send_time=0.0, end_time=1.0, text=text,
                         output_ids=ids, finish_reason=finish, error=error)


def test_align_text_keeps_the_generated_split(tokenizer) -> None:
    canonical = tokenizer.encode("hello", add_special_tokens=False)
    generated = tokenizer.encode("hel", add_special_tokens=False) + tokenizer.encode("lo", add_special_tokens=False)
    assert generated != canonical and tokenizer.decode(generated) == "hello"
    # re-tokenizing the text would report a false mismatch; anchoring on the reference does not
    assert align_text("hello", generated, tokenizer) == generated
    ref = tokenizer.encode("héllo 世界 def foo():", add_special_tokens=False)
    diverged = align_text("héllo 世界 def bar():", ref, tokenizer)
    assert tokenizer.decode(diverged) == "héllo 世界 def bar():"
    same = 0
    while same < min(len(ref), len(diverged)) and ref[same] == diverged[same]:
        same += 1
    assert tokenizer.decode(ref[:same]) == "héllo 世界 def"  # the divergence sits where the text differs


def test_candidate_tokens_restore_eos(tokenizer) -> None:
    ref = tokenizer.encode(" yes", add_special_tokens=False) + [EOS]
    assert candidate_tokens(_record(0, " yes", finish="stop"), ref, tokenizer, {EOS}) == ref
    assert candidate_tokens(_record(0, " yes", finish="length"), ref, tokenizer, {EOS}) == ref[:-1]
    assert candidate_tokens(_record(0, "ignored", ids=[9, 9], finish="stop"), ref, tokenizer, {EOS}) == [9, 9, EOS]


def test_check_run_identical_mismatch_and_near_tie(tokenizer) -> None:
    jobs = [Job(index=i, prompt=Prompt(id=f"p{i}", text="x"), prompt_ids=(1,), max_tokens=3) for i in range(4)]
    base = [_record(i, ids=[10, 11, 12]) for i in range(4)]
    gaps = {0: [5.0, 5.0, 5.0], 1: [5.0, 5.0, 5.0], 2: [5.0, 1e-4, 5.0], 3: [5.0, 5.0, 5.0]}
    reference = lambda job: ReferenceOutput(tokens=[10, 11, 12], top2_gaps=gaps[job.index])  # noqa: E731
    server = [_record(0, ids=[10, 11, 12]),  # identical
              _record(1, ids=[10, 99, 12]),  # diverges where the reference is sure: mismatch
              _record(2, ids=[10, 98, 7]),  # diverges at a near tie: accepted
              _record(3, error="HTTP 500")]  # failed: skipped
    result = check_run("grove c=1", server, jobs, "hf c=1", base, reference, tokenizer, {EOS})
    assert (result.checked, result.identical, result.near_tie, result.skipped) == (3, 1, 1, 1)
    assert not result.ok and [m["prompt_id"] for m in result.mismatches] == ["p1"]
    assert result.mismatches[0]["diverged_at"] == 1
    ok = check_run("grove c=1", server[:1] + server[2:], jobs, "hf c=1", base, reference, tokenizer, {EOS})
    assert ok.ok and ok.to_json()["ok"] is True


def test_near_tie_scales_with_the_reference_dtype() -> None:
    """A bf16 reference (logits near 20 spaced 0.125) calls a gap of 3 units a near tie, 5 units not;
    without dtype spacings (fp32 references) the 1e-3 rule stands alone."""
    from engine.reference import compare_greedy

    def ref(gap: float, ulps: list[float] | None) -> ReferenceOutput:
        return ReferenceOutput(tokens=[10, 11], top2_gaps=[1.0, gap], top1_ulps=ulps)

    assert compare_greedy(ref(0.375, [0.125, 0.125]), [10, 99]).near_tie
    assert not compare_greedy(ref(0.625, [0.125, 0.125]), [10, 99]).ok
    assert not compare_greedy(ref(0.375, None), [10, 99]).ok
    assert compare_greedy(ref(5e-4, None), [10, 99]).near_tie


def test_a_16_bit_near_tie_is_judged_in_fp32_too() -> None:
    """A bf16 reference whose own gap is 5 units (0.625 at spacing 0.125) is not a near tie by
    itself; its fp32 arbiter decides: the two tokens within 4 units there (or the candidate's ahead)
    make it one, 4.5 units apart they do not."""
    from engine.reference import compare_greedy

    asked: list[tuple[int, int]] = []

    def ref(exact: float) -> ReferenceOutput:
        def gap(step: int, token: int) -> float:
            asked.append((step, token))
            return exact
        return ReferenceOutput(tokens=[10, 11], top2_gaps=[1.0, 0.625], top1_ulps=[0.125, 0.125], exact_gap=gap)

    assert compare_greedy(ref(0.1), [10, 99]).near_tie
    assert asked == [(1, 99)]
    assert compare_greedy(ref(-2.0), [10, 99]).near_tie
    bad = compare_greedy(ref(0.5625), [10, 99])
    assert not bad.ok and "own dtype 5.62e-01" in bad.message
    assert compare_greedy(ref(0.5), [10, 11]).ok and len(asked) == 3  # identical: the arbiter is not asked


def test_exact_gaps_reads_the_logits_after_the_reference_prefix(model_dir) -> None:
    """On the bundled model in fp32, the arbiter at step s, asked about the runner-up, gives
    generate's own top-2 gap at s (a full forward against generate's KV cache: float noise)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.reference import exact_gaps, hf_greedy

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prompt = [1, 504, 3458, 282, 4649, 314]
    ref = hf_greedy(model, prompt, 6)
    gap = exact_gaps(model, prompt, ref.tokens)
    for step in (0, 3, 5):
        ids = torch.tensor([[*prompt, *ref.tokens[:step]]])
        with torch.inference_mode():
            second = model(ids).logits[0, -1].topk(2).indices[1].item()
        assert abs(gap(step, second) - ref.top2_gaps[step]) < 1e-3
        assert gap(step, ref.tokens[step]) == 0.0

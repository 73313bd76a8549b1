"""Random schedules through one engine, checked token for token: ``python -m launcher.engine_fuzz --help``.

Each round builds a bf16 engine with a tight KV pool (4-8 blocks) and a random step budget, its
lookahead drafting as wide as it may (``FreeWideSteps``), prefix caching on or off, and feeds it
4-12 requests at random steps: prompts sharing a prefix, prompts that repeat a pattern (drafts
hit), random ones; greedy, or sampled with a seed (a seeded request's tokens do not depend on
what shares its steps, nor on lookahead); random priorities; now and then an abort. About half
the requests take options that act inside a draft tree's rows or end the output mid-path, picked
from the tokens the request gives without them so that they bite: stop tokens and strings,
penalties, logit bias, min_tokens, bad words, allowed tokens, a regex, logprobs, prompt logprobs;
some resume from a part of their output (as the gateway resumes a request whose decode worker
died); some carry a ``cache_salt`` (their tenant's prefix cache and drafts only); some repeat an
earlier request's prompt whole (as ``n`` > 1 or a client's retry does). It checks the
allocator's integrity after every step, and at the end that every request not aborted gave what it
gives alone on a roomy engine without lookahead (tokens, finish reason, text, logprobs), and that
no block is still in use.
bf16 by default, where Grove's forward is row-invariant on a CPU with AVX512-BF16 or AVX2
(engine.invariance): a token's bits do not depend on what shares its step, so any difference is a
scheduling or verification bug, not rounding. ``--dtype float32`` (the bundled model's own dtype,
which ``make run`` serves) runs the same schedules on a forward that is not: fp32 products (torch's
``F.linear`` or ``W @ X``, or Grove's fp32 kernel, whichever engine.fp32_products timed fastest for
the step's row count) round a row by the rows beside it in the step
(engine.llm_engine takes fp32 lookahead as it is), so there logprobs are compared within
``FP32_LOGPROB_TOL`` and the rest exactly, tokens included (a greedy pick that rounding turns needs
two logits within ~1e-5).

It found two bugs in session 34: a drafted sequence preempted and scheduled again in the same step
had its draft tree verified in place of its recompute chunk, and a victim of a lower priority
already scheduled in the step kept its place with its blocks gone (the step raised). And one in
session 35: a request's top logprobs listed equal values in the order ``torch.topk`` gave them,
which changed with the largest top-n its step asked for (engine.sampling.top_k_lowest_first).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from engine.engine_config import EngineConfig
from engine.layers import ROW_INVARIANT_DTYPES
from engine.llm_engine import LLMEngine
from engine.lookahead.budget import FreeWideSteps
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.structured import StructuredSpec

logger = logging.getLogger(__name__)
MAX_STEPS = 5000  # a round that takes more is stuck (two sequences waiting for each other's blocks)
REGEXES = (r"[0-9, ]{1,60}", r"(the|a|an)( [a-z]{1,8}){1,12}\.")  # outputs a grammar keeps to
FIELDS = ("output_ids", "finish_reason", "text", "logprobs", "prompt_logprobs")
LOGPROB_FIELDS = ("logprobs", "prompt_logprobs")
# where the forward's rounding depends on the step (fp32): seen up to ~1e-5 apart from alone
FP32_LOGPROB_TOL = 1e-4


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a request gave: compared field by field with its output alone."""

    output_ids: list[int]
    finish_reason: str | None
    text: str
    logprobs: list[Any]  # per output token past the resumed ones
    prompt_logprobs: list[Any]

    @classmethod
    def of(cls, seq: Sequence) -> "Outcome":
        return cls(seq.output_ids, seq.finish_reason, seq.detok.text, seq.logprobs, seq.prompt_logprobs)

    def differences(self, want: "Outcome", logprob_tol: float = 0.0) -> list[str]:
        """Each field that differs from ``want``'s, with where lists first differ. ``logprob_tol``:
        how far apart two logprobs may be (0: bit for bit); ids, ranks and the rest compare exactly."""
        out = []
        for name in FIELDS:
            a, b = getattr(self, name), getattr(want, name)
            if a != b and not (logprob_tol and name in LOGPROB_FIELDS and _close(a, b, logprob_tol)):
                at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) \
                    if isinstance(a, list) else None
                where = f" at {at}: {a[at:at + 1]} != {b[at:at + 1]}" if at is not None else f": {a!r} != {b!r}"
                out.append(name + where)
        return out


def _close(a: Any, b: Any, tol: float) -> bool:
    """``a`` equals ``b`` but for floats at most ``tol`` apart (nested lists and tuples)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0.0, abs_tol=tol)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@dataclass(slots=True)
class RoundResult:
    requests: int = 0
    shaped: int = 0  # of the requests, with options beyond the sampling (stops, penalties, ..)
    resumed: int = 0  # of the requests, resumed from a part of their output
    sampled: int = 0  # of the requests, sampled with a seed (the others greedy)
    salted: int = 0  # of the requests, with a cache_salt (vLLM's: prefix cache and drafts of its tenant only)
    twins: int = 0  # of the requests, with an earlier one's prompt (its whole prompt may be cached)
    aborted: int = 0
    preemptions: int = 0
    accepted_drafts: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, other: "RoundResult") -> None:
        """Adds another round's counts and failures to these."""
        self.requests += other.requests
        self.shaped += other.shaped
        self.resumed += other.resumed
        self.sampled += other.sampled
        self.salted += other.salted
        self.twins += other.twins
        self.aborted += other.aborted
        self.preemptions += other.preemptions
        self.accepted_drafts += other.accepted_drafts
        self.failures += other.failures


class EngineFuzz:
    def __init__(self, model: str, dtype: str = "bfloat16", device: str = "cpu") -> None:
        self.model, self.dtype, self.device = model, dtype, device
        self.reference = LLMEngine(EngineConfig(model=model, dtype=dtype, device=device, num_kv_blocks=256,
                                                lookahead=False))
        # regexes need xgrammar, which a GPU machine may lack (scripts/stage_gpu.sh stages it apart)
        self.has_xgrammar = importlib.util.find_spec("xgrammar") is not None
        # 16 bits: a row's bits do not depend on its step (the engine checks it at start, else drafts
        # nothing); fp32: they do, by rounding alone
        self.logprob_tol = 0.0 if self.reference.model.dtype in ROW_INVARIANT_DTYPES else FP32_LOGPROB_TOL
        self._alone: dict[tuple[tuple[int, ...], str, tuple[int, ...]], Outcome] = {}

    def alone(self, prompt: list[int], params: SamplingParams, resume: tuple[int, ...] = ()) -> Outcome:
        """What the request gives alone on the roomy engine without lookahead."""
        key = (tuple(prompt), repr(params), resume)
        if key not in self._alone:
            eng = self.reference
            seq = eng.make_sequence(f"alone-{len(self._alone)}", prompt, params, resume_ids=resume)
            eng.add_sequence(seq)
            while eng.has_work:
                eng.step()
            self._alone[key] = Outcome.of(seq)
        return self._alone[key]

    def shape(self, rng: random.Random, prompt: list[int], params: SamplingParams) -> SamplingParams:
        """Options that act inside a tree's rows or end the output mid-path, taken from the tokens
        the request gives without them (so that a stop is met, a penalty or a ban changes a pick)."""
        out = self.alone(prompt, params).output_ids
        k = rng.randrange(len(out))
        piece = self.reference.tokenizer.decode(out[k : k + 2])
        opts: dict[str, Any] = {}
        roll = rng.random
        if roll() < 0.2:
            opts["stop_token_ids"] = (out[k],)
        if roll() < 0.2 and piece.strip():
            opts["stop"], opts["include_stop_str_in_output"] = (piece,), roll() < 0.5
        if roll() < 0.25:
            opts["ignore_eos"] = False
            if roll() < 0.5:
                opts["min_tokens"] = rng.randrange(params.max_tokens + 1)
        if roll() < 0.25:
            opts.update(rng.choice([{"repetition_penalty": 1.3}, {"frequency_penalty": 1.0},
                                    {"presence_penalty": 1.5, "repetition_penalty": 0.9}]))
        if roll() < 0.15:
            opts["logit_bias"] = ((out[k], rng.choice([-4.0, 3.0])),)
        if roll() < 0.15 and piece.strip():
            opts["bad_words"] = (piece.strip(),)
        if roll() < 0.1:
            opts["allowed_token_ids"] = tuple(sorted(set(prompt) | set(out[:k])))
        elif roll() < 0.08 and "min_tokens" not in opts and self.has_xgrammar:  # (a grammar refuses both)
            opts["structured"] = StructuredSpec("regex", rng.choice(REGEXES))
        if roll() < 0.3:
            opts["logprobs"] = rng.choice([0, 1, 5])
        if roll() < 0.1:
            opts["prompt_logprobs"] = rng.choice([0, 3])
        return dataclasses.replace(params, **opts)

    def round(self, seed: int) -> RoundResult:
        rng = random.Random(seed)
        # streams of their own, not drawn from the main one; a round's schedule still changes with
        # them (a twin's prompt, its output's length that options are drawn from, a salt's drafts)
        salts, twins = random.Random(-seed), random.Random(seed + 1_000_003)
        blocks = rng.choice([4, 5, 6, 8])
        eng = LLMEngine(EngineConfig(model=self.model, dtype=self.dtype, device=self.device, num_kv_blocks=blocks,
                                     max_num_batched_tokens=rng.choice([16, 48, 128, 512]),
                                     prefix_caching=rng.random() < 0.7))
        if eng.speculator is not None and rng.random() < 0.8:
            eng.speculator.cost, eng.speculator.max_step_tokens = FreeWideSteps(), rng.choice([16, 64, 256])
        cap = blocks * eng.config.block_size  # a request must fit the pool alone
        shared = [rng.randrange(100, 3000) for _ in range(40)]
        pattern = [rng.randrange(100, 3000) for _ in range(5)]

        def request() -> tuple[list[int], int]:
            kind = rng.random()
            if kind < 0.4:  # a shared prefix (prefix cache hits, blocks shared between sequences)
                prompt = shared[: rng.randrange(8, 40)] + [rng.randrange(100, 3000) for _ in range(rng.randrange(1, 10))]
            elif kind < 0.7:  # a repeated pattern: the drafts hit, long trees
                prompt = (pattern * 10)[: rng.randrange(10, 45)]
            else:
                prompt = [rng.randrange(100, 30000) for _ in range(rng.randrange(3, 50))]
            return prompt, max(1, min(rng.randrange(1, 60), cap - len(prompt)))

        result = RoundResult()
        pending = [request() for _ in range(rng.randrange(4, 13))]
        for i in range(1, len(pending)):  # twins: an earlier request's prompt whole (n > 1, retries)
            if twins.random() < 0.2:
                prompt = pending[twins.randrange(i)][0]
                pending[i] = (prompt, max(1, min(pending[i][1], cap - len(prompt))))
                result.twins += 1
        live: dict[str, tuple[Sequence, list[int], SamplingParams, tuple[int, ...]]] = {}
        aborted: set[str] = set()
        steps = 0
        while pending or eng.has_work:
            if pending and (not eng.has_work or rng.random() < 0.3):
                prompt, n = pending.pop()
                rid = f"r{len(live)}"
                sampled = rng.random() < 0.3
                params = SamplingParams(temperature=0.8 if sampled else 0.0, top_p=0.95 if sampled else 1.0,
                                        seed=rng.randrange(1000) if sampled else None, max_tokens=n, ignore_eos=True)
                if rng.random() < 0.5:
                    params = self.shape(rng, prompt, params)
                    result.shaped += 1
                resume: tuple[int, ...] = ()
                whole = self.alone(prompt, params).output_ids
                if rng.random() < 0.15 and len(whole) > 1:  # it had these tokens when its worker died
                    resume = tuple(whole[: rng.randrange(1, len(whole))])
                    result.resumed += 1
                salt = salts.choice(["", "", "", "tenant-a", "tenant-b"])  # its own prefix cache and drafts
                result.salted += bool(salt)
                seq = eng.make_sequence(rid, prompt, params, priority=rng.choice([0, 0, 1, 2]), cache_salt=salt,
                                        resume_ids=resume)
                eng.add_sequence(seq)
                live[rid] = (seq, prompt, params, resume)
            if eng.has_work:
                eng.step()
                steps += 1
                eng.allocator.check_integrity()
            if live and rng.random() < 0.03:
                rid = rng.choice(list(live))
                if eng.abort(rid):
                    aborted.add(rid)
            if steps > MAX_STEPS:
                result.failures.append(f"seed {seed}: stuck after {steps} steps")
                break
        for rid, (seq, prompt, params, resume) in live.items():
            if rid not in aborted:
                for diff in Outcome.of(seq).differences(self.alone(prompt, params, resume), self.logprob_tol):
                    result.failures.append(f"seed {seed} {rid} ({blocks} blocks, resumed after {len(resume)} tokens, "
                                           f"{params}): {diff}")
        if eng.allocator.num_used:
            result.failures.append(f"seed {seed}: {eng.allocator.num_used} blocks still in use")
        result.requests, result.aborted = len(live), len(aborted)
        result.sampled = sum(params.temperature > 0 for _, _, params, _ in live.values())
        result.preemptions = eng.scheduler.num_preemptions
        result.accepted_drafts = eng.speculator.stats.num_accepted_tokens if eng.speculator is not None else 0
        return result


def main(argv: list[str] | None = None) -> int:
    from engine.convert import convert_smollm2

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="the first round's seed (round i: seed + i)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--model", default="", help="a model directory (default: the bundled model)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (scripts/gpu_lookahead.sh)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("engine").setLevel(logging.ERROR)  # (a tight pool warns that it caps contexts)
    fuzz = EngineFuzz(args.model or str(convert_smollm2()), args.dtype, args.device)
    total = RoundResult()
    for i in range(args.rounds):
        r = fuzz.round(args.seed + i)
        total.add(r)
        for f in r.failures:
            logger.error("%s", f)
    logger.info("%d rounds: %d requests (%d sampled, %d with more options, %d resumed, %d salted, %d twins, "
                "%d aborted), %d preemptions, %d draft tokens accepted, %d failures", args.rounds, total.requests,
                total.sampled, total.shaped, total.resumed, total.salted, total.twins, total.aborted,
                total.preemptions, total.accepted_drafts, len(total.failures))
    return 1 if total.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Random schedules through one engine, checked token for token: ``python -m launcher.engine_fuzz --help``.

Each round builds a bf16 engine with a tight KV pool (4-8 blocks) and a random step budget, its
lookahead drafting as wide as it may (``FreeWideSteps``), prefix caching on or off, and feeds it
4-12 requests at random steps: prompts sharing a prefix, prompts that repeat a pattern (drafts
hit), random ones; greedy, or sampled with a seed (a seeded request's tokens do not depend on
what shares its steps, nor on lookahead); random priorities; now and then an abort. It checks the
allocator's integrity after every step, and at the end that every request not aborted gave the
tokens it gives alone on a roomy engine without lookahead, and that no block is still in use.
bf16, where Grove's forward is row-invariant on a CPU with AVX512-BF16 (engine.invariance): a
token's bits do not depend on what shares its step, so any difference is a scheduling or
verification bug, not rounding.

It found two (session 34): a drafted sequence preempted and scheduled again in the same step had
its draft tree verified in place of its recompute chunk, and a victim of a lower priority already
scheduled in the step kept its place with its blocks gone (the step raised).
"""
from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass, field

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.lookahead.budget import FreeWideSteps
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

logger = logging.getLogger(__name__)
MAX_STEPS = 5000  # a round that takes more is stuck (two sequences waiting for each other's blocks)


@dataclass(slots=True)
class RoundResult:
    requests: int = 0
    sampled: int = 0  # of the requests, sampled with a seed (the others greedy)
    aborted: int = 0
    preemptions: int = 0
    accepted_drafts: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, other: "RoundResult") -> None:
        """Adds another round's counts and failures to these."""
        self.requests += other.requests
        self.sampled += other.sampled
        self.aborted += other.aborted
        self.preemptions += other.preemptions
        self.accepted_drafts += other.accepted_drafts
        self.failures += other.failures


class EngineFuzz:
    def __init__(self, model: str, dtype: str = "bfloat16") -> None:
        self.model, self.dtype = model, dtype
        self.reference = LLMEngine(EngineConfig(model=model, dtype=dtype, num_kv_blocks=256, lookahead=False))
        self._alone: dict[tuple[tuple[int, ...], int, float, int | None], list[int]] = {}

    def alone(self, prompt: list[int], params: SamplingParams) -> list[int]:
        key = (tuple(prompt), params.max_tokens, params.temperature, params.seed)
        if key not in self._alone:
            self._alone[key] = self.reference.generate([prompt], params)[0].output_ids
        return self._alone[key]

    def round(self, seed: int) -> RoundResult:
        rng = random.Random(seed)
        blocks = rng.choice([4, 5, 6, 8])
        eng = LLMEngine(EngineConfig(model=self.model, dtype=self.dtype, num_kv_blocks=blocks,
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
        live: dict[str, tuple[Sequence, list[int], SamplingParams]] = {}
        aborted: set[str] = set()
        steps = 0
        while pending or eng.has_work:
            if pending and (not eng.has_work or rng.random() < 0.3):
                prompt, n = pending.pop()
                rid = f"r{len(live)}"
                sampled = rng.random() < 0.3
                params = SamplingParams(temperature=0.8 if sampled else 0.0, top_p=0.95 if sampled else 1.0,
                                        seed=rng.randrange(1000) if sampled else None, max_tokens=n, ignore_eos=True)
                live[rid] = (eng.add_request(rid, prompt, params, priority=rng.choice([0, 0, 1, 2])), prompt, params)
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
        for rid, (seq, prompt, params) in live.items():
            got = seq.output_ids
            want = got if rid in aborted else self.alone(prompt, params)
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                result.failures.append(f"seed {seed} {rid} ({blocks} blocks): differs from its output alone at token {at}")
        if eng.allocator.num_used:
            result.failures.append(f"seed {seed}: {eng.allocator.num_used} blocks still in use")
        result.requests, result.aborted = len(live), len(aborted)
        result.sampled = sum(params.temperature > 0 for _, _, params in live.values())
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("engine").setLevel(logging.ERROR)  # (a tight pool warns that it caps contexts)
    fuzz = EngineFuzz(args.model or str(convert_smollm2()), args.dtype)
    total = RoundResult()
    for i in range(args.rounds):
        r = fuzz.round(args.seed + i)
        total.add(r)
        for f in r.failures:
            logger.error("%s", f)
    logger.info("%d rounds: %d requests (%d sampled, %d aborted), %d preemptions, %d draft tokens accepted, %d failures",
                args.rounds, total.requests, total.sampled, total.aborted, total.preemptions, total.accepted_drafts,
                len(total.failures))
    return 1 if total.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

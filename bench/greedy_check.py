"""Do a server's greedy outputs match a baseline's? Token for token, with the near-tie rule.

Where the outputs are identical, that settles it. Where they differ, the baseline's model
decides through ``engine.reference``: ``hf_greedy`` gives its tokens and top-2 logit gaps, and
``compare_greedy`` accepts a divergence only at a genuine near tie.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

from bench.records import Job, RequestRecord
from engine.reference import ReferenceOutput, compare_greedy

TIE_TOL = 1e-3


def align_text(text: str, ref_tokens: Sequence[int], tokenizer: Any) -> list[int]:
    """Token ids for a server's ``text``: the longest prefix of ``ref_tokens`` whose decoding
    starts ``text``, then the rest re-tokenized.

    Re-tokenizing the whole text could split it differently from how it was generated; anchoring
    on the reference keeps identical outputs identical and puts a divergence where it happened.
    """
    for i in range(len(ref_tokens), -1, -1):
        prefix = tokenizer.decode(list(ref_tokens[:i]), skip_special_tokens=True)
        if text.startswith(prefix):
            rest = text[len(prefix):]
            return list(ref_tokens[:i]) + (list(tokenizer.encode(rest, add_special_tokens=False)) if rest else [])
    raise AssertionError("unreachable: the empty prefix always matches")


def candidate_tokens(record: RequestRecord, ref_tokens: Sequence[int], tokenizer: Any, eos_ids: Collection[int]) -> list[int]:
    """The server's output as token ids comparable with ``generate``'s (which ends with EOS when it stopped)."""
    if record.output_ids is not None:
        ids = list(record.output_ids)
    else:
        core = list(ref_tokens)
        if core and core[-1] in eos_ids:
            core.pop()  # the server's text never contains EOS; align on the text before it
        ids = align_text(record.text, core, tokenizer)
    if record.finish_reason == "stop" and (not ids or ids[-1] not in eos_ids):
        # "stop" = the model produced EOS (the bench sends no stop strings): restore that token
        ids.append(ref_tokens[-1] if ref_tokens and ref_tokens[-1] in eos_ids else min(eos_ids))
    return ids


@dataclass(slots=True)
class CheckResult:
    contender: str  # run label of the server run
    baseline: str  # baseline name
    checked: int = 0
    identical: int = 0
    near_tie: int = 0  # diverged only at a near tie: accepted
    skipped: int = 0  # failed requests: nothing to compare
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {"contender": self.contender, "baseline": self.baseline, "ok": self.ok, "checked": self.checked,
                "identical": self.identical, "near_tie": self.near_tie, "skipped": self.skipped,
                "mismatches": self.mismatches}


def check_run(contender: str, records: Sequence[RequestRecord], jobs: Sequence[Job], baseline: str,
              baseline_records: Sequence[RequestRecord], reference: Callable[[Job], ReferenceOutput],
              tokenizer: Any, eos_ids: Collection[int], tie_tol: float = TIE_TOL) -> CheckResult:
    """Compare each server record with the baseline's record of the same job.

    ``jobs`` and ``baseline_records`` cover one pass over the prompts; a run with a duration
    repeats them, so a record's job is ``index % len(jobs)``.
    """
    by_index = {r.job_index: r for r in baseline_records}
    result = CheckResult(contender=contender, baseline=baseline)
    for r in sorted(records, key=lambda r: r.job_index):
        job = jobs[r.job_index % len(jobs)]
        base = by_index.get(job.index)
        if not r.ok or base is None or not base.ok or base.output_ids is None:
            result.skipped += 1
            continue
        result.checked += 1
        cand = candidate_tokens(r, base.output_ids, tokenizer, eos_ids)
        if cand == base.output_ids:
            result.identical += 1
            continue
        match = compare_greedy(reference(job), cand, tie_tol)
        if match.ok and match.near_tie:
            result.near_tie += 1
        elif match.ok:
            result.identical += 1  # identical to the baseline model's plain greedy decoding
        else:
            result.mismatches.append({"prompt_id": job.prompt.id, "index": r.job_index,
                                      "diverged_at": match.diverged_at, "message": match.message})
    return result

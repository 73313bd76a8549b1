"""Drafts that know the answer, for measuring what lookahead could reach (scripts/lookahead_ceiling.py).

``OracleSpeculator`` stands in for the engine's speculator: each decoding sequence drafts a chain
of its known greedy output, which verification takes whole, so a run with it prices the wider
steps against the tokens they win with no miss. ``drafter_steps`` replays the engine's own drafter
over a known output with drafts free (no planner, no step costs): the tokens a step it finds.
"""
from __future__ import annotations

from collections.abc import Sequence

from engine.batch import tree_depths
from engine.lookahead.drafter import Drafter
from engine.lookahead.speculator import Speculator, draft_room
from engine.lookahead.tree import DraftTree, accept_path
from engine.sequence import Sequence as Seq


class OracleSpeculator(Speculator):
    """Drafts each sequence's known greedy output ahead: its next ``depth`` tokens (a chain), or with
    ``runs``, as many as retrieval could have found there (``runs[prompt][n]``: after n output tokens)."""

    def __init__(self, base: Speculator, answers: dict[tuple[int, ...], list[int]], depth: int,
                 runs: dict[tuple[int, ...], list[int]] | None = None) -> None:
        super().__init__(base.max_depth, base.width, base.max_step_tokens, base.step_align)
        self.cost = base.cost
        self.answers = answers
        self.depth = depth
        self.runs = runs

    def propose(self, seqs: Sequence[Seq], base_tokens: int, base_key_reads: int = 0,
                context_keys: int = 0) -> dict[str, DraftTree]:
        out: dict[str, DraftTree] = {}
        for s in seqs:
            key = tuple(s.prompt_ids)
            answer = self.answers[key]
            room = draft_room(s)
            n = len(s.output_ids)
            depth = self.depth if self.runs is None else min(self.depth, self.runs[key][n])
            chain = answer[n : n + min(depth, room)]
            if chain:
                tree = DraftTree()
                tree.add_branch(chain, len(chain))
                out[s.request_id] = tree
        return out


def drafter_steps(drafter: Drafter, request_id: str, prompt: Sequence[int], output: Sequence[int],
                  depth: int, width: int) -> int:
    """Steps the engine's drafter would take over ``output`` (after its first token) with drafts free:
    each step its tree of ``depth`` x ``width`` tokens, walked along the known output as
    verification walks it along the model's choices (engine.lookahead.tree.accept_path)."""
    tokens, n, steps = [*prompt, output[0]], 1, 0
    while n < len(output):
        drafter.observe(request_id, tokens, len(prompt))
        tree = drafter.propose(request_id, tokens, depth * width, depth)
        ids, parents = tree.step_input(tokens[-1])
        # the model's choice after each node: the output's token at its depth (-1: past the end)
        choices = [output[n + d] if n + d < len(output) else -1 for d in tree_depths(parents)]
        _, new = accept_path(parents, ids, choices)
        new = [t for t in new if t != -1]
        tokens += new
        n += len(new)
        steps += 1
    drafter.forget(request_id)
    return steps

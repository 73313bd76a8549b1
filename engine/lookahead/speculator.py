"""Lookahead inside the engine step: propose trees before scheduling, verify them after sampling.

Verification is exact: the model's choice is sampled at every tree node (counter-based noise keyed
by the token's position, so the same draw as plain decoding), and drafts are accepted only while
they equal those choices. The accepted path's K/V are compacted into consecutive slots.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from engine.lookahead.acceptance import AcceptanceModel
from engine.lookahead.budget import StepCostModel, drafts_can_pay, plan_drafts
from engine.lookahead.corpus import CorpusIndex
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.lookahead.numbering import DigitVocab
from engine.lookahead.tree import DraftTree, accept_path, accepted_on_first_branch
from engine.sequence import Sequence as Seq

logger = logging.getLogger(__name__)
PROBE_DEPTH = 2
# A request whose plan drafts nothing before its first verified draft is probed (PROBE_DEPTH) only
# while fewer than PROBES_PER_SOURCE drafts from its match's source (own text, all outputs,
# numbers) were verified server-wide or probed in the same step: after that the classes' rates,
# which every new request starts from, are being learnt, and one more probe only pays its price.
# Chat at c=16 in bf16 on an AVX2 CPU (16 requests starting together, 64 tokens): 16 probes cost
# ~12 ms a node, ~2.5% of the batch's decode, and won 6-12 tokens of 23-30 nodes.
PROBES_PER_SOURCE = 4
# Matrix products run on tiles of 16 columns (AMX or avx512_bf16 on a CPU, tensor cores on a GPU;
# Grove's bf16 CPU kernel: 14, 6 on its AVX2 path; engine.layers.step_tile), so a step's cost jumps just past a
# multiple. Intel with AMX, one sequence behind 300 tokens, bf16, 2 threads, 40 alternations: 16
# tokens 42.7 ms, 17 46.1; 32 tokens 52.8, 33 57.7 (fp32 +3-4%). AMD EPYC (avx512_bf16), torch's
# products alone: 16 columns 17.9 ms, 17 28.2; 32 19.7, 33 30.6. A width-2 tree of depth 8 or 16
# is 17 or 33 step tokens. A step that passes a multiple by at most STEP_ALIGN // 4 tokens drops
# that many draft nodes (``align`` below). The default; the engine passes its model's.
STEP_ALIGN = 16
# Every output token extends each open window of the global trie: ~2 x GLOBAL_WINDOW node updates a
# token, 0.45 ms of a 25 ms step at chat c=16 with windows of 16. Global drafts (other requests'
# outputs) are short in practice (chat: ~1.8 tokens accepted a draft); copies come from the
# request's own text, which drafts up to max_depth.
GLOBAL_WINDOW = 8


@dataclass(slots=True)
class SpecStats:
    """Counters in vLLM's spirit (exported as metrics by the workers)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: Counter[int] = field(default_factory=Counter)
    # by the source of a draft's first branch (engine.lookahead.drafter.Match: own, global, corpus,
    # prediction, number): which caches pay
    draft_tokens_by_source: Counter[str] = field(default_factory=Counter)
    accepted_by_source: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Verified:
    path: list[int]  # step-input node indices from 0 (the last token) along the accepted drafts
    tokens: list[int]  # tokens to append: accepted drafts + the model's next token


class Speculator:
    def __init__(self, max_depth: int, width: int, max_step_tokens: int, step_align: int = STEP_ALIGN,
                 digits: DigitVocab | None = None, corpus: CorpusIndex | None = None) -> None:
        # the global trie stores windows of up to GLOBAL_WINDOW tokens (the own cache drafts max_depth);
        # digits: the tokenizer's, for drafting the next number (engine.lookahead.numbering);
        # corpus: the server's text to draft from (engine.lookahead.corpus)
        self.drafter = Drafter(DrafterConfig(window=min(max_depth, GLOBAL_WINDOW)), digits, corpus)
        self.cost = StepCostModel()
        self.max_depth = max_depth
        self.width = width
        self.max_step_tokens = max_step_tokens
        self.step_align = step_align
        self.acceptance = AcceptanceModel()
        self.stats = SpecStats()
        self._sources: dict[str, str] = {}  # a request's draft in this step: its first branch's source

    @staticmethod
    def eligible(seq: Seq) -> bool:
        """Lookahead is on for a request unless it turned it off (the server switch removes the speculator)."""
        # (penalties too: each tree row is penalised for the drafts on its path, LLMEngine._sample)
        # (an adapter whose 16-bit products are not row-invariant here would make a draft's rows
        # differ from plain decoding's: such a request decodes plainly)
        return seq.params.lookahead is not False and not seq.is_prefilling and not seq.hold_kv \
            and (seq.lora is None or seq.lora.row_invariant)

    def propose(self, seqs: Sequence[Seq], base_tokens: int, base_key_reads: int = 0,
                context_keys: int = 0) -> dict[str, DraftTree]:
        """Draft chains or trees for the decoding sequences, sized by plan_drafts (base_*: the step
        without drafts; context_keys: the step's sequences' cached keys)."""
        if not seqs:
            return {}
        max_nodes = min(self.max_step_tokens - base_tokens, len(seqs) * self.max_depth * self.width)
        if not drafts_can_pay(len(seqs), base_tokens, self.cost, max_nodes, min(s.num_tokens for s in seqs),
                              base_key_reads, context_keys):
            return {}  # no probe either; the tries catch up on the text when drafting can pay, or at finish
        acc = self.acceptance
        classes = []
        for s in seqs:
            self.drafter.observe(s.request_id, s.all_ids, s.num_prompt, s.cache_salt, s.params.prediction)
            m = self.drafter.match(s.request_id, s.all_ids)
            classes.append(acc.draft_class(s.request_id, m.source, m.key_length) if m is not None else None)
        # a request no cache continues expects nothing from a draft: the step's budget goes to others
        rhos = [acc.rho(s.request_id, c) if c is not None else 0.0 for s, c in zip(seqs, classes)]
        yields = [acc.branch_yield(s.request_id) for s in seqs]
        depths, widths = plan_drafts(rhos, base_tokens, self.cost, self.max_depth, self.width, self.max_step_tokens,
                                     [s.num_tokens for s in seqs], base_key_reads, context_keys, yields)
        out: dict[str, DraftTree] = {}
        probes: Counter[str] = Counter()  # this step's, by source
        for s, cls, depth, width in zip(seqs, classes, depths, widths):
            if cls is None:
                continue
            room = draft_room(s)
            if depth == 0 and acc.verified(s.request_id) == 0 and \
                    acc.server_drafts(cls[0]) + probes[cls[0]] < PROBES_PER_SOURCE:
                # a shallow probe while the source's rates are unknown: where a plain step is cheaper
                # than a wide one (fp32 on CPU, batch 1) the cost model alone would never learn
                # that requests copy
                depth = PROBE_DEPTH
                probes[cls[0]] += 1
            depth = min(depth, room)
            tree = self.drafter.propose(s.request_id, s.all_ids, depth * width, depth) if depth > 0 else DraftTree()
            if len(tree):
                out[s.request_id] = tree
                self._sources[s.request_id] = cls[0]
                acc.drafted(s.request_id, cls)
            else:
                acc.idle(s.request_id, cls)
        align(base_tokens, list(out.values()), self.step_align)  # trims, never empties a tree
        return out

    def verify(self, seq: Seq, tree: DraftTree, sampled: list[int]) -> Verified:
        tokens, parents = tree.step_input(seq.all_ids[-1])
        path, new = accept_path(parents, tokens, sampled)
        accepted = len(path) - 1
        # the first branch is the chain the request's rate describes; what the other branches
        # took beyond it is their yield
        first = tree.first_branch()
        on_first = accepted_on_first_branch(path, first)
        self.acceptance.update(seq.request_id, on_first, first, whole=accepted >= tree.depth)
        self.acceptance.branches_verified(seq.request_id, accepted - on_first, len(tree) - first)
        st = self.stats
        st.num_drafts += 1
        st.num_draft_tokens += len(tree)
        st.num_accepted_tokens += accepted
        source = self._sources.pop(seq.request_id, "own")
        st.draft_tokens_by_source[source] += len(tree)
        st.accepted_by_source[source] += accepted
        for pos in range(accepted):
            st.accepted_per_pos[pos] += 1
        seq.num_draft_tokens += len(tree)  # its accepted ones are counted by the engine, as they reach the output
        return Verified(path, new)

    def finish(self, seq: Seq) -> None:
        """A request ended with output: the global trie learns the rest of it, then it is forgotten."""
        if seq.params.lookahead is not False:
            self.drafter.retire(seq.request_id, seq.all_ids, seq.num_prompt, seq.cache_salt)
        self.forget(seq.request_id)

    def forget(self, request_id: str) -> None:
        self._sources.pop(request_id, None)
        self.drafter.forget(request_id)
        self.acceptance.forget(request_id)


def draft_room(seq: Seq) -> int:
    """Draft tokens the sequence can still take: never past max_tokens or the context limit (the
    step adds the model's own token after the drafts)."""
    return min(seq.params.max_tokens - len(seq.output_ids), seq.max_len - seq.num_tokens) - 1


def align(base_tokens: int, trees: list[DraftTree], multiple: int) -> None:
    """Trims a step of ``base_tokens`` plus the trees' nodes back to a multiple of ``multiple`` when
    it passes one by at most a quarter of it (``keep``): the last nodes of the largest trees go
    (their weakest branches, merged last), which costs little acceptance and saves the jump
    (STEP_ALIGN). Trees of ``keep`` nodes or fewer (probes, short drafts) are left whole."""
    keep = multiple // 4
    excess = (base_tokens + sum(len(t) for t in trees)) % multiple
    if excess > keep or excess > sum(max(0, len(t) - keep) for t in trees):
        return
    for _ in range(excess):
        largest = max(trees, key=len)
        largest.truncate(len(largest) - 1)


def node_positions(tree: DraftTree, num_cached: int) -> list[int]:
    """Position of the token sampled after each step-input node (node 0: the last token)."""
    tokens, parents = tree.step_input(0)
    depth = [0] * len(tokens)
    for i in range(1, len(tokens)):
        depth[i] = depth[parents[i]] + 1
    return [num_cached + d + 1 for d in depth]


def compaction_slots(block_table: Sequence[int], block_size: int, num_cached: int, path: Sequence[int],
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Flat (src, dst) slots moving path node d from logical index num_cached + path[d] to num_cached + d,
    on ``device`` (the KV pool's: a CUDA kernel cannot read host tensors)."""
    moves = [(num_cached + p, num_cached + d) for d, p in enumerate(path) if p != d]
    if not moves:
        return None

    def slot(i: int) -> int:
        return block_table[i // block_size] * block_size + i % block_size

    src = torch.tensor([slot(a) for a, _ in moves], dtype=torch.long, device=device)
    dst = torch.tensor([slot(b) for _, b in moves], dtype=torch.long, device=device)
    return src, dst

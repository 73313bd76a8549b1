"""Tree packing, the verification walk, the n-gram trie and the adaptive budget on hand-built cases."""
from __future__ import annotations

import random
from typing import Any, Sequence

import pytest

from engine.engine_config import MAX_DRAFT_DEPTH, EngineConfig
from engine.lookahead import budget
from engine.lookahead.budget import SPIKE, StepCostModel, key_reads, plan_depths
from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.lookahead.ngram_trie import NGramTrie
from engine.lookahead.position_index import PositionIndex
from engine.lookahead.speculator import align, compaction_slots, node_positions
from engine.lookahead.tree import DraftTree, accept_path, accepted_on_first_branch


def test_branches_share_prefixes() -> None:
    t = DraftTree()
    t.add_branch([5, 6, 7], budget=10)
    t.add_branch([5, 6, 8], budget=10)
    t.add_branch([9], budget=10)
    assert t.tokens == [5, 6, 7, 8, 9]
    assert t.parents == [-1, 0, 1, 1, -1]
    assert t.depth == 3
    tokens, parents = t.step_input(42)
    assert tokens == [42, 5, 6, 7, 8, 9] and parents == [-1, 0, 1, 2, 2, 0]


def test_budget_cuts_branches_and_empty_tree() -> None:
    t = DraftTree()
    t.add_branch([1, 2, 3, 4], budget=2)
    t.add_branch([7, 8], budget=2)
    assert t.tokens == [1, 2] and len(t) == 2
    empty = DraftTree()
    assert empty.step_input(3) == ([3], [-1]) and empty.depth == 0


def test_truncate_keeps_the_first_branches_as_a_tree() -> None:
    t = DraftTree()
    t.add_branch([5, 6, 7], budget=10)
    t.add_branch([5, 8, 9], budget=10)
    t.truncate(4)  # node 4 (9) goes; 8 stays under 5
    assert t.tokens == [5, 6, 7, 8] and t.parents == [-1, 0, 1, 0]
    t.add_branch([5, 8, 10], budget=10)  # the index forgot node 4: a new child can take its place
    assert t.tokens == [5, 6, 7, 8, 10] and t.parents == [-1, 0, 1, 0, 3]


def _chain(n: int, first: int = 1) -> DraftTree:
    t = DraftTree()
    t.add_branch(list(range(first, first + n)), budget=n)
    return t


def test_align_trims_a_step_just_past_a_multiple_of_16() -> None:
    # one sequence: 1 + 32 drafts = 33 tokens -> 32; 1 + 16 -> 16
    for n, want in ((32, 31), (16, 15)):
        t = _chain(n)
        align(1, [t], 16)
        assert len(t) == want
    # 20 decodes + 13 drafts = 33: the largest tree loses one node; 4-node trees are never cut
    big, small = _chain(9), _chain(4, 50)
    align(20, [big, small], 16)
    assert (len(big), len(small)) == (8, 4)
    # too far past (5 of 16), or nothing but short trees to cut: left alone
    t = _chain(20)
    align(1, [t], 16)
    assert len(t) == 20
    probes = [_chain(2), _chain(3)]
    align(12, probes, 16)  # 17 tokens
    assert [len(p) for p in probes] == [2, 3]
    align(16, [], 16)


def test_accept_path_follows_model_choices() -> None:
    tokens, parents = [42, 5, 6, 7, 8, 9], [-1, 0, 1, 2, 2, 0]
    # model after 42 -> 5, after 5 -> 6, after 6 -> 8, after 8 -> 11 (no child): accept 5, 6, 8 + bonus 11
    sampled = [5, 6, 8, 0, 11, 0]
    path, new = accept_path(parents, tokens, sampled)
    assert path == [0, 1, 2, 4] and new == [5, 6, 8, 11]
    # first choice misses every branch: only the model's own token
    assert accept_path(parents, tokens, [3, 0, 0, 0, 0, 0]) == ([0], [3])


def test_positions_and_compaction_slots() -> None:
    t = DraftTree()
    t.add_branch([5, 6, 7], budget=10)
    t.add_branch([5, 9], budget=10)
    assert node_positions(t, 20) == [21, 22, 23, 24, 23]
    # path 0 -> 1 -> 4 (drafts 5, 9): node 4 moves from logical 24 to 22; blocks of 16
    src, dst = compaction_slots([3, 8], 16, 20, [0, 1, 4])
    assert src.tolist() == [8 * 16 + 8] and dst.tolist() == [8 * 16 + 6]
    assert compaction_slots([3, 8], 16, 20, [0, 1, 2]) is None


def test_trie_best_first_and_decay() -> None:
    trie = NGramTrie(max_nodes=1000)
    for _ in range(3):
        trie.insert((1,), [2, 3, 4])
    trie.insert((1,), [2, 5])
    trie.insert((1,), [6])
    # best-first: 2 (4), 2-3 (3), 2-3-4 (3), then the first of the count-1 ties (6, inserted at the root)
    assert trie.branches((1,), budget=4, max_depth=3) == [[2, 3, 4], [6]]
    assert trie.branches((1,), budget=5, max_depth=2) == [[2, 3], [6], [2, 5]]  # depth cap cuts 2-3-4
    assert trie.branches((99,), 4, 3) == []
    trie.decay()  # counts halve: 2-5 and 6 fall under 1 and go
    assert trie.branches((1,), 8, 3) == [[2, 3, 4]]
    small = NGramTrie(max_nodes=10)
    for i in range(20):
        small.insert((i,), [i + 1, i + 2])
    assert small.num_nodes <= 10 + 3  # bounded: decay pruned the one-off entries


def test_drafter_indexes_incrementally_and_proposes_copies() -> None:
    d = Drafter(DrafterConfig(key_lengths=(2, 1), window=4))
    prompt = [10, 11, 12, 13, 14, 15, 16, 17]
    d.observe("r", prompt, len(prompt))
    tree = d.propose("r", [99, 10, 11], budget=4, max_depth=4)
    assert tree.tokens[:4] == [12, 13, 14, 15]
    d.observe("r", prompt + [30, 31], len(prompt))  # only the new windows are added
    d.forget("r")
    assert "r" not in d.local


def test_a_longer_key_in_every_requests_outputs_beats_a_one_token_key_of_the_own_text() -> None:
    d = Drafter(DrafterConfig())
    d.observe("old", [1, 2, 5, 6, 7, 8, 9], 2)  # an answer: 5 6 -> 7 8 9 in the global trie
    text = [6, 50, 60, 40, 5, 6]  # the own text continues only the 1-token key (6,): 50 60
    d.observe("new", text, 3)
    m = d.match("new", text)
    assert (m.source, m.key_length) == ("global", 2)
    tree = d.propose("new", text, budget=8, max_depth=4)
    assert tree.tokens[:tree.first_branch()] == [7, 8, 9]
    assert 50 not in tree.tokens  # after a cache that drafted, another adds only its longest key's
    d.observe("new2", [40, 5, 6, 70, 71, 72, 3, 40, 5, 6], 7)  # the own text continues the 3-token key
    tree = d.propose("new2", [40, 5, 6, 70, 71, 72, 3, 40, 5, 6], budget=8, max_depth=4)
    assert tree.tokens == [70, 71, 72, 3]  # own first; the global trie continues only the 2-token key: nothing
    text2 = [*text, 7, 5, 6]  # once the own text has the 2-token key too, it comes first again
    d.observe("new", text2, 3)
    assert d.match("new", text2).source == "own"
    tree = d.propose("new", text2, budget=8, max_depth=4)
    assert tree.tokens[:2] == [7, 5]


def index_from_scratch(config: DrafterConfig, keys: Sequence[int], tokens: Sequence[int], start: int, end: int,
                       trie: NGramTrie) -> None:
    """The definition the drafter's cursors must match, walked from the key every time: for every
    window tokens[first .. last] with last in [start, end), under every key that fits, one count
    on its last node (and one on the key when the window is one token long)."""
    for last in range(start, end):
        for first in range(max(1, last - config.window + 1), last + 1):
            for k in keys:
                if first - k >= 0:
                    node = trie.root(tuple(tokens[first - k : first]))
                    if first == last:
                        node.count += 1.0
                    for tok in tokens[first : last + 1]:
                        node = trie.child(node, tok)
                    node.count += 1.0


def counts(trie: NGramTrie) -> dict[Any, Any]:
    def node(n: Any) -> tuple[float, dict[int, Any]]:
        return n.count, {tok: node(c) for tok, c in n.children.items()}
    return {key: node(root) for key, root in trie.roots.items()}


@pytest.mark.parametrize("seed", range(40))
def test_incremental_index_equals_one_from_scratch(seed: int) -> None:
    """Requests observed a few tokens at a time, interleaved: the global trie (outputs only) holds
    exactly the counts of indexing the whole text at once, and a request's own position index
    counts, for every key, what a window trie over its whole text (prompt and output) holds."""
    rng = random.Random(seed)
    config = DrafterConfig(key_lengths=rng.choice([(3, 2, 1), (2, 1), (1,)]), window=rng.choice([1, 2, 4, 8]),
                           global_key_lengths=rng.choice([(3, 2, 1), (3, 2), (1,)]))
    d = Drafter(config)
    texts = {rid: [rng.randrange(4) for _ in range(rng.randrange(12))] for rid in "abc"}
    prompts = {rid: len(t) for rid, t in texts.items()}
    for _ in range(30):
        rid = rng.choice("abc")
        d.observe(rid, texts[rid], prompts[rid])
        texts[rid] += [rng.randrange(4) for _ in range(rng.randrange(1, 4))]
    shared = NGramTrie()
    for rid, cache in d.local.items():
        text = texts[rid][: cache.own.fed]
        own = NGramTrie()
        index_from_scratch(config, config.key_lengths, text, 0, len(text), own)
        for key in own.roots:
            found = cache.own.continuations(key, config.window, limit=len(text))
            assert counts(found) == {key: counts(own)[key]}
        assert set(cache.own.starts) == set(own.roots)
        index_from_scratch(config, config.global_key_lengths, texts[rid], prompts[rid], cache.shared.fed, shared)
    assert counts(d.global_trie) == counts(shared)


def test_own_cache_counts_the_latest_occurrences() -> None:
    idx = PositionIndex((1,))
    text = [5, 1, 5, 2, 5, 2, 5, 3]
    idx.feed(text, len(text))
    assert idx.starts[(5,)] == [1, 3, 5, 7]
    assert idx.branches((5,), budget=3, max_depth=1, limit=4) == [[2], [1], [3]]  # 2 twice
    assert idx.branches((5,), budget=3, max_depth=1, limit=2) == [[2], [3]]  # the last two only
    assert idx.branches((9,), 3, 1, 4) == []


def test_windows_survive_a_decay_of_their_trie() -> None:
    """A decay may prune the nodes open windows hold: they are found again, and what follows is counted."""
    d = Drafter(DrafterConfig(key_lengths=(1,), global_key_lengths=(1,), window=4, global_max_nodes=30))
    text = list(range(10))  # all distinct: every count is 1, so a decay prunes everything
    d.observe("r", text, 0)  # no prompt: everything is output, indexed in the global trie
    trie = d.global_trie
    assert trie.epoch == 1 and trie.num_nodes == 0
    d.observe("r", text + [7, 8, 9], 0)
    # the window 7 8 9 (after key 6) was open across the decay: its fourth token counts in the live trie
    node = trie.roots[(6,)]
    for tok in (7, 8, 9, 7):
        node = node.children[tok]
    assert node.count == 1.0
    assert d.propose("other", [6, 7], budget=3, max_depth=3).tokens[:2] == [8, 9]


def test_cost_points_stay_where_the_steps_were() -> None:
    """Steps of 17 tokens land in the (16, 32] bucket: the curve must price 17 tokens at what they
    cost, and 32 tokens at more (a point at x=32 would have called a 32-token step as cheap as 17)."""
    cost = StepCostModel(alpha=0.5)
    cost.observe(16, 0.100)
    for _ in range(20):
        cost.observe(17, 0.110)
    assert abs(cost.cost(17) - 0.110) < 1e-6
    assert abs(cost.cost(16) - 0.100) < 1e-9 and 0.100 < cost.cost(16.5) < 0.110  # type: ignore[arg-type]
    assert cost.cost(32) > 0.2  # beyond the widest step seen: linear from it


def test_a_slowed_narrow_step_never_prices_wide_steps_below_it() -> None:
    """Timings from a stack's start (another worker loading beside this one): 2 tokens at 969 ms,
    8 at 51. Read as they are, a 2-token step priced a 4-token one 17x cheaper, so drafting looked
    better than free and every request drafted wide. The curve is non-decreasing: narrow points
    are capped at the wider ones."""
    cost = StepCostModel()
    for n, seconds in ((1, 0.2508), (2, 0.9689), (4, 0.0584), (8, 0.0514), (16, 0.0577), (32, 0.0590), (64, 0.0695)):
        cost.observe(n, seconds)
    costs = [cost.cost(n) for n in range(1, 129)]
    assert all(a <= b for a, b in zip(costs, costs[1:]))
    assert cost.cost(2) == cost.cost(8) == pytest.approx(0.0514)
    assert cost.cost(64) == pytest.approx(0.0695) and cost.points[2] == (2.0, 0.9689)  # the points stay


@pytest.mark.parametrize("max_depth", [5, 8, 16, 20])
def test_a_sure_copy_drafts_to_max_depth(max_depth: int) -> None:
    """With flat step costs a request that always copies drafts as deep as --lookahead-max-depth
    allows: the depth levels tried include max_depth itself (they once stopped at 8 whatever the
    flag said)."""
    cost = StepCostModel()
    for n in (1, 64, 128):
        cost.observe(n, 0.030)
    assert plan_depths([0.99], 1, cost, max_depth, 2, 256) == [max_depth]


def test_key_reads_price_drafts_behind_long_contexts() -> None:
    """A draft node attends to its sequence's whole context: with a per-key-read cost (bf16 on CPU
    attends in fp64: ~1 us per query token and key, measured), the same copying request drafts
    deep behind 100 tokens and shallower (or not at all) behind 4,000; the step model subtracts
    the key reads before learning its per-token curve."""
    cost = StepCostModel()
    cost.per_key_read = 1e-6
    for n in (1, 2, 4, 8, 16, 32, 64):
        cost.observe(n, 0.030 + 1e-6 * n * (64 + n), key_reads=n * (64 + n))
    assert abs(cost.cost(8) - 0.030) < 1e-9  # flat in tokens once the key reads are taken out
    assert abs(cost.cost(8, key_reads=1000) - 0.031) < 1e-9
    short = plan_depths([0.8], 1, cost, 8, 2, 256, kv_lens=[100], base_key_reads=100)[0]
    long = plan_depths([0.8], 1, cost, 8, 2, 256, kv_lens=[4000], base_key_reads=4000)[0]
    assert short >= 6 and long < short
    # without the term (the old model) the long context drafts as deep: the term is what moved it
    cost.per_key_read = 0.0
    assert plan_depths([0.8], 1, cost, 8, 2, 256, kv_lens=[4000], base_key_reads=4000)[0] == short


def test_a_context_stream_stays_out_of_the_token_curve() -> None:
    """Each sequence's cached keys are streamed once a step, drafts or not (per_context_key). A
    step of n decodes behind 600 tokens each then costs 0.2 ms a token plus 1.8 ms a sequence
    for its stream: observed with the stream's term, the curve stays 0.2 ms a token; learnt as
    tokens alone (the old model) it looks 2 ms a token and the same five copying requests draft
    chains a third shorter."""
    def learn(per_context_key: float) -> StepCostModel:
        cost = StepCostModel()
        cost.per_context_key = per_context_key
        for _ in range(3):
            for n in (1, 2, 4, 8, 16):
                cost.observe(n, 0.028 + 0.0002 * n + 3e-6 * 600 * n, context_keys=600 * n)
        return cost

    def plan(cost: StepCostModel) -> list[int]:
        return plan_depths([0.9] * 5, 5, cost, 8, 1, 256, kv_lens=[600] * 5, context_keys=5 * 600)

    cost = learn(3e-6)
    assert abs(cost.cost(6) - (0.028 + 0.0002 * 6)) < 1e-6
    assert abs(cost.cost(6, context_keys=3000) - (0.028 + 0.0012 + 0.009)) < 1e-6
    old = learn(0.0)
    assert old.cost(16) - old.cost(8) > 0.015
    assert sum(plan(cost)) >= 1.5 * sum(plan(old)) and min(plan(cost)) > min(plan(old))


def test_an_extra_attention_group_is_priced_only_beside_plain_decodes() -> None:
    """Where some decoding sequences draft and others do not, a grouping backend attends the trees
    apart (one more group per layer, ~2.5 ms in bf16 on 2 cores). A marginal draft at batch 4 that
    pays for its tokens but not for that group is left out; at batch 1 (no plain decode beside the
    tree) the group is never paid, and the same draft is made."""
    cost = StepCostModel()
    for n in (1, 4, 8, 16, 32):
        cost.observe(n, 0.010 + 0.0002 * n)
    marginal = [0.35, 0.0, 0.0, 0.0]
    assert plan_depths(marginal, 4, cost, 8, 2, 256)[0] > 0
    cost.group_overhead = 0.003
    assert cost.cost(6, extra_group=True) == pytest.approx(cost.cost(6) + 0.003)
    assert plan_depths(marginal, 4, cost, 8, 2, 256) == [0, 0, 0, 0]
    assert plan_depths([0.35], 1, cost, 8, 2, 256)[0] > 0  # alone: its tree is the only group
    # every request drafting: the step has no plain decode to attend apart from
    assert all(d > 0 for d in plan_depths([0.6] * 4, 4, cost, 8, 2, 256))


def test_drafts_that_cost_more_than_priced_are_priced_higher_then_retried() -> None:
    """Steps with drafts running at 2.5x their price while plain ones run at 1.2x (seen at batch 16
    behind long contexts in bf16): the extra cost of drafting is scaled by ~2.1, and a request
    that drafted before drafts less. Plain steps after that relax the factor back towards 1."""
    cost = StepCostModel(alpha=0.5)
    for n in (1, 16, 32, 64):
        cost.observe(n, 0.100 + 0.002 * n)
    before = plan_depths([0.6] * 16, 16, cost, 8, 2, 256)
    assert sum(before) > 0
    for _ in range(20):
        cost.observe_step(False, 1.2 * cost.cost(16), cost.cost(16))
        cost.observe_step(True, 2.5 * cost.cost(40), cost.cost(40))
    assert cost.draft_factor == pytest.approx(2.5 / 1.2, rel=0.05)
    after = plan_depths([0.6] * 16, 16, cost, 8, 2, 256)
    assert sum(after) < sum(before)
    for _ in range(200):
        cost.observe_step(False, 1.2 * cost.cost(16), cost.cost(16))
    assert cost.draft_factor < 1.05
    # drafted steps cheaper than plain ones (noise) never price drafting below the curve
    for _ in range(20):
        cost.observe_step(True, 0.5 * cost.cost(40), cost.cost(40))
    assert cost.draft_factor == 1.0


def test_a_plan_drafts_only_if_it_pays_more_than_the_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """At batch 16 with drafts accepted half the time, drafting wins ~1% by the price: within what
    the price leaves out, so the step does not draft (chat at c=16 ran at 0.82-0.97x of lookahead
    off that way). Without the margins (MIN_GAIN on the step's rate, RISK on each draft's expected
    tokens) the same plan drafts; at 60% it pays ~8% and drafts."""
    cost = StepCostModel()
    for n in (1, 16, 32, 64):
        cost.observe(n, 0.100 + 0.002 * n)
    assert plan_depths([0.5] * 16, 16, cost, 8, 2, 256) == [0] * 16
    assert sum(plan_depths([0.6] * 16, 16, cost, 8, 2, 256)) > 0
    monkeypatch.setattr(budget, "MIN_GAIN", 0.0)
    assert plan_depths([0.5] * 16, 16, cost, 8, 2, 256) == [0] * 16
    monkeypatch.setattr(budget, "RISK", 0.0)
    assert sum(plan_depths([0.5] * 16, 16, cost, 8, 2, 256)) > 0


@pytest.mark.parametrize("depth", [0, MAX_DRAFT_DEPTH + 1])
def test_draft_depth_outside_what_exact_attention_takes_is_refused(depth: int) -> None:
    """The CPU kernel's AMX path keeps a node's sums exact for trees up to MAX_DRAFT_DEPTH deep."""
    with pytest.raises(ValueError, match=f"lookahead_max_depth must be between 1 and {MAX_DRAFT_DEPTH}"):
        EngineConfig(lookahead_max_depth=depth)
    assert EngineConfig(lookahead_max_depth=MAX_DRAFT_DEPTH).lookahead_max_depth == MAX_DRAFT_DEPTH


@pytest.mark.parametrize("path, first, expected", [
    ([0], 3, 0),              # nothing accepted
    ([0, 1, 2, 3], 3, 3),     # the whole first branch
    ([0, 1, 4], 3, 1),        # left it after one node for another branch
    ([0, 4, 5], 3, 0),        # another branch from the root
    ([0, 1, 2, 3], 2, 2),     # node 3 continues node 2 but is not on the 2-node first branch
])
def test_accepted_on_first_branch(path: list[int], first: int, expected: int) -> None:
    """The drafts a chain (the tree's first branch) would have had accepted: the request's rate
    learns from these, the branch yield from the rest."""
    assert accepted_on_first_branch(path, first) == expected


def test_a_spell_of_slow_steps_barely_moves_the_cost_model_but_a_lasting_change_does() -> None:
    """A shared machine now and then runs a step at several times its cost (a 15 ms pass measured
    at a p90 of 114 ms beside a neighbour). Every 5th step 8x slow must not retune the planner:
    unclipped, the prices of 16-40 token steps rose 2.1-2.6x. A lasting 2x slowdown is
    still learnt."""
    cost = StepCostModel()
    for n in (1, 16, 32, 64):
        cost.observe(n, 0.030 if n <= 16 else 0.030 + 0.0006 * (n - 16))
    widths = (16, 24, 40)  # one of each bucket from 16 tokens up
    before = {n: cost.cost(n) for n in widths}
    for i in range(100):
        for n in widths:
            cost.observe(n, (8.0 if (i + n) % 5 == 0 else 1.0) * before[n])
        cost.observe_step(False, (8.0 if i % 5 == 0 else 1.0) * cost.cost(16), cost.cost(16))
        cost.observe_step(True, (8.0 if i % 5 == 2 else 1.0) * cost.cost(40), cost.cost(40))
    assert all(cost.cost(n) < 1.25 * before[n] for n in widths), {n: cost.cost(n) / before[n] for n in widths}
    assert cost.draft_factor < 1.3
    for _ in range(60):  # the machine 2x slower for good
        for n in widths:
            cost.observe(n, 2 * before[n])
    assert all(cost.cost(n) > 1.9 * before[n] for n in widths)


def test_key_reads_count_the_causal_triangle() -> None:
    """A prefill chunk's token i reads the cached keys and the chunk's first i + 1; so does a tree
    node at most (its ancestors come before it). Counted as q x (cached + q), a 2,048-token chunk
    from scratch was priced at twice its key reads."""
    assert key_reads(100, 1) == 101  # a decode: the cache and itself
    assert key_reads(0, 4) == 1 + 2 + 3 + 4
    assert key_reads(10, 3) == 11 + 12 + 13
    assert key_reads(0, 2048) == 2048 * 2049 // 2


def test_a_step_its_key_terms_overprice_leaves_the_token_curve_standing() -> None:
    """Chat at c=16 (bf16, AVX2 CPU): a 2,048-token prefill chunk whose key terms came to more than
    the whole step left its point at ~0, and the curve, which never falls, priced every narrower
    step at ~0: a draft node cost only its key reads (~8 of ~13 ms), and lookahead ran at 0.92x of
    off. Such a step moves the curve by at most 1 / SPIKE; the narrow steps keep their prices."""
    cost = StepCostModel()
    cost.per_key_read = 7e-6
    for n in (1, 16, 64, 256):  # as calibrated: 25 ms + 4.3 ms a token
        cost.observe(n, 0.025 + 0.0043 * n)
    before = {n: cost.cost(n) for n in (1, 8, 16, 64)}
    f = cost.token_cost(2048)
    reads = 4 * 10**6  # priced at 28 s against a 21 s step
    cost.observe(2048, 21.0, key_reads=reads)
    share = 21.0 * f / (f + cost.per_key_read * reads)
    assert cost.token_cost(2048) == pytest.approx(share / SPIKE)
    assert {n: cost.cost(n) for n in before} == before
    for _ in range(5):  # again and again: each time the point falls by at most 1 / SPIKE of it
        point = cost.token_cost(2048)
        cost.observe(2048, 21.0, key_reads=reads)
        assert cost.token_cost(2048) >= point * (1 - cost.alpha + cost.alpha / SPIKE) - 1e-12
    assert {n: cost.cost(n) for n in before} == before

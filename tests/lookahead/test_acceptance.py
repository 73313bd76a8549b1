"""Acceptance by match class: what the drafter would match, per-class estimates with a server-wide
prior, and the speculator sizing each request's draft by its match."""
from __future__ import annotations

import pytest

from engine.lookahead.acceptance import CUT, FIRST, WHOLE, Acceptance, AcceptanceModel
from engine.lookahead.budget import FreeWideSteps, StepCostModel, drafts_can_pay, plan_depths, plan_drafts
from engine.lookahead.drafter import Drafter, DrafterConfig, Match
from engine.lookahead.speculator import PROBE_DEPTH, PROBES_PER_SOURCE, Speculator
from engine.lookahead.tree import DraftTree
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def test_a_salted_request_drafts_only_from_its_salts_outputs() -> None:
    """vLLM's cache_salt: another tenant's outputs are never drafted for a salted request (its
    accepted-token counts would tell whether a guess at them was right), nor its outputs for
    others; a request of the same salt drafts from them as from the shared trie."""
    d = Drafter(DrafterConfig(key_lengths=(3, 2, 1), global_key_lengths=(3, 2), window=4, salted_tries=2))
    d.observe("plain", [1, 2, 3, 4, 5, 6, 7], 2)  # output [3 .. 7] feeds the shared trie
    d.observe("a-1", [11, 12, 13, 14, 15, 16, 17], 2, cache_salt="a")  # output [13 .. 17]: salt a's
    text = [99, 98]
    for rid, salt in (("plain-2", ""), ("a-2", "a"), ("b-1", "b")):
        d.observe(rid, text, len(text), cache_salt=salt)
    assert d.propose("plain-2", [99, 4, 5], 4, 4).tokens == [6, 7]
    assert d.match("plain-2", [99, 14, 15]) is None
    assert d.propose("a-2", [99, 14, 15], 4, 4).tokens == [16, 17]
    assert d.match("a-2", [99, 4, 5]) is None
    assert d.match("b-1", [99, 4, 5]) is None and d.match("b-1", [99, 14, 15]) is None
    assert d.global_trie.roots.keys().isdisjoint(d.salted["a"].roots.keys())
    d.observe("c-1", text, len(text), cache_salt="c")  # a third salt: the least recent (a) goes
    assert list(d.salted) == ["b", "c"]
    assert d.propose("a-2", [99, 14, 15], 4, 4).tokens == [16, 17]  # a running request keeps its trie


def test_match_is_where_the_tree_starts() -> None:
    """The request's own text before every request's outputs, longest key first; None when no
    cache continues the text. ``propose`` builds its first branch from that same match."""
    d = Drafter(DrafterConfig(key_lengths=(3, 2, 1), global_key_lengths=(3, 2), window=4))
    d.observe("other", [1, 2, 3, 4, 5, 6, 7], 2)  # output [3, 4, 5, 6, 7] feeds the global trie
    prompt = [20, 21, 22, 23, 24, 30, 31]
    d.observe("r", prompt, len(prompt))
    assert d.match("r", prompt + [20, 21, 22]) == Match("own", 3)
    assert d.propose("r", prompt + [20, 21, 22], 4, 4).tokens == [23, 24, 30, 31]
    assert d.match("r", prompt + [99, 21, 22]) == Match("own", 2)
    assert d.match("r", prompt + [99, 98, 24]) == Match("own", 1)
    assert d.match("r", [99, 4, 5]) == Match("global", 2)  # (4, 5) is not in r's own text
    assert d.propose("r", [99, 4, 5], 4, 4).tokens == [6, 7]
    assert d.match("r", [99, 98, 7]) is None  # no 1-token keys in the global trie; 7 ends the text
    assert d.match("unknown", [4, 5, 6]) == Match("global", 3)


def test_a_class_starts_from_the_server_rate_and_each_request_learns_its_own() -> None:
    m = AcceptanceModel(prior_weight=2.0)
    weak = m.draft_class("a", "own", 1)
    assert weak == ("own", 1, FIRST) and m.rho("a", weak) == pytest.approx(0.5)  # the optimistic prior
    for _ in range(30):  # request a's 1-token matches are always rejected
        cls = m.draft_class("a", "own", 1)
        m.drafted("a", cls)
        m.update("a", 0, 4)
    assert m.draft_class("a", "own", 1) == ("own", 1, CUT)
    server = m.server[("own", 1, CUT)].rho
    assert server < 0.1
    # a new request's first cut-after 1-token match starts at the server's rate, not the prior
    m.draft_class("b", "own", 3)
    m.drafted("b", ("own", 3, FIRST))
    m.update("b", 2, 4)
    assert m.draft_class("b", "own", 1) == ("own", 1, CUT)
    assert m.rho("b", ("own", 1, CUT)) == pytest.approx(server)
    assert m.rho("b", ("own", 3, CUT)) == pytest.approx(0.5)  # a class nobody drafted yet
    # b's own luck moves b's estimate (worth prior_weight drafts), not a's
    m.drafted("b", ("own", 1, CUT))
    m.update("b", 4, 4)
    assert m.draft_class("b", "own", 3) == ("own", 3, WHOLE)
    assert m.rho("b", ("own", 1, CUT)) > 0.5 > m.rho("a", ("own", 1, CUT))
    assert m.verified("b") == 2 and m.verified("c") == 0
    m.forget("a")
    assert "a" not in m.requests and ("own", 1, CUT) in m.server


def seq(rid: str, prompt: list[int], output: list[int]) -> Sequence:
    s = Sequence(rid, prompt, SamplingParams(temperature=0.0, max_tokens=64), 0, None, 4096)  # type: ignore[arg-type]
    s.all_ids += output
    return s


def test_drafts_are_sized_by_the_match_they_come_from() -> None:
    """Two requests in one step with flat step costs: one whose text continues under a 3-token key
    that has always been taken whole drafts deep; one whose only match is a 1-token key that has
    always been rejected drafts nothing, and one no cache continues is not drafted at all."""
    spec = Speculator(max_depth=8, width=1, max_step_tokens=256)
    cost = spec.cost
    for n in (1, 16, 64):
        cost.observe(n, 0.030 + 0.0001 * n)
    acc = spec.acceptance
    for _ in range(40):  # the server's history: 3-token matches after whole drafts hit, 1-token ones miss
        for rid, cls, got in (("h1", ("own", 3, WHOLE), 8), ("h2", ("own", 1, CUT), 0)):
            acc.drafted(rid, cls)
            acc.update(rid, got, 8)
            acc.requests[rid].previous = cls[2]
    copy = seq("copy", list(range(100, 140)), [100, 101, 102])  # continues under key (100, 101, 102)
    weak = seq("weak", [7, 1, 2, 3, 7, 4, 5, 6], [9, 9, 7])  # only (7,) recurs
    lost = seq("lost", [1, 2, 3], [50, 51, 52])
    for s, previous in ((copy, WHOLE), (weak, CUT), (lost, CUT)):
        acc.draft_class(s.request_id, "own", 1)
        acc.requests[s.request_id].previous, acc.requests[s.request_id].verified = previous, 5  # no probes
    drafts = spec.propose([copy, weak, lost], base_tokens=3)
    assert set(drafts) == {"copy"}
    assert drafts["copy"].tokens == list(range(103, 111))  # depth 8: the whole continuation
    assert acc.requests["copy"].pending == ("own", 3, WHOLE)
    assert ("own", 1, CUT) in acc.requests["weak"].by_class  # matched, priced, left out


def test_a_verified_tree_teaches_its_first_branch_rate_and_the_other_branches_yield() -> None:
    """The request's rate describes the chain a width-1 draft would be (the tree's first branch);
    what the other branches took beyond it is the request's branch yield (and the server's). A tree
    [5, 6, 7] + [5, 8] whose model chose 5 then 8: the first branch matched 1 of its 3 tokens, the
    second branch's one node won one more token."""
    spec = Speculator(max_depth=8, width=2, max_step_tokens=256)
    acc = spec.acceptance
    s = seq("r", [1, 2, 3, 4], [])
    tree = DraftTree()
    tree.add_branch([5, 6, 7], 8)
    tree.add_branch([5, 8], 8)
    assert tree.first_branch() == 3 and len(tree) == 4
    acc.drafted("r", ("own", 3, FIRST))
    server = acc.server_branches.per_node
    assert acc.branch_yield("r") == server  # no tree verified yet: the server's
    # step input: 0 = last token, 1..3 = 5, 6, 7, 4 = 8; the model's choice after each node
    v = spec.verify(s, tree, sampled=[5, 8, 0, 0, 9])
    assert v.path == [0, 1, 4] and v.tokens == [5, 8, 9]
    est = acc.requests["r"].by_class[("own", 3, FIRST)]
    prior = Acceptance()  # the server's prior, worth prior_weight drafts
    w = acc.prior_weight
    assert est.accepted == pytest.approx(0.9 * w * prior.rho + 1)  # one token on the first branch
    assert est.misses == pytest.approx(0.9 * w * (1 - prior.rho) + 1)  # cut short of its 3
    nodes = acc.branch_prior_nodes
    assert acc.branch_yield("r") == pytest.approx((0.9 * server * nodes + 1) / (0.9 * nodes + 1))
    assert acc.branch_yield("r") > server and acc.branch_yield("other") > server  # the server learnt too
    assert acc.requests["r"].previous == CUT  # 2 tokens of a tree 3 deep: cut short
    # a chain (width 1) teaches no branch yield
    before = acc.branch_yield("r")
    chain = DraftTree()
    chain.add_branch([10, 11], 2)
    acc.drafted("r", ("own", 3, CUT))
    spec.verify(s, chain, sampled=[10, 3, 0])
    assert acc.branch_yield("r") == before
    # branches that never win: the request's yield falls fast, the server's (every request's) slowly
    for _ in range(10):
        acc.branches_verified("r", 0, 8)
    assert acc.branch_yield("r") < 0.6 * acc.branch_yield("other")


def test_trees_ride_along_where_width_is_free_and_chains_win_where_it_is_not() -> None:
    """plan_drafts prices a width-2 tree's other branch at its nodes' cost and their measured
    yield. Flat step costs (batch 1 on a CPU, a GPU): the tree, whose extra nodes win something
    for nothing, for the request whose branches win; a request whose branches never win drafts a
    chain. At batch 16 with each token ~2% of a step (bf16 on 2 cores) and a yield of 0.1 a node:
    chains, and every request drafts, where trees of width 2 would not pay at all (the old
    planner: nothing drafted)."""
    flat = StepCostModel()
    for n in (1, 16, 64):
        flat.observe(n, 0.030)
    depths, widths = plan_drafts([0.8, 0.8], 2, flat, 8, 2, 256, branch_yields=[0.1, 0.0])
    assert widths == [2, 1] and depths[0] > 0 and depths[1] > 0
    assert plan_drafts([0.8], 1, flat, 8, 2, 256, branch_yields=[0.0])[1] == [1]  # no yield: no reason for width
    steep = StepCostModel()
    for n in (1, 16, 32, 64):
        steep.observe(n, 0.040 + 0.001 * n)
    rhos = [0.6] * 16
    chains, widths = plan_drafts(rhos, 16, steep, 8, 2, 256, branch_yields=[0.1] * 16)
    assert widths == [1] * 16 and all(d > 0 for d in chains)
    assert plan_depths(rhos, 16, steep, 8, 2, 256) == [0] * 16
    assert plan_drafts(rhos, 16, steep, 8, 1, 256, branch_yields=[0.5] * 16) == (chains, [1] * 16)  # --lookahead-width 1


def test_free_wide_steps_plan_every_draft_as_deep_as_the_step_allows() -> None:
    """FreeWideSteps (the tests' and launcher.engine_fuzz's cost model) prices every width alike,
    so the planner gives each request with any acceptance the deepest draft that fits the step's
    token limit, however weak its rate: the verification paths get exercised at full width."""
    free = FreeWideSteps()
    free.observe_step(True, 0.05, 1.0)  # the engine feeds it step times as any cost model
    free.observe_step(False, 0.01, 1.0)
    assert plan_depths([0.05] * 16, 16, free, 8, 1, 256) == [8] * 16
    assert plan_depths([0.5] * 16, 16, free, 8, 1, 16 + 8 * 8) == [8] * 8 + [0] * 8  # the step's limit: first come
    assert plan_depths([0.5, 0.0], 2, free, 8, 1, 256) == [8, 0]  # nothing continues the second: nothing to expect


def test_probes_stop_once_the_sources_rates_are_being_learnt() -> None:
    """Where the plan drafts nothing (each token a large share of the step), a new request is
    probed only while few drafts of its match's source were verified server-wide: 16 chat requests
    starting together were 16 probes, ~2.5% of their decode at c=16 on a CPU for 6-12 tokens."""
    spec = Speculator(max_depth=8, width=1, max_step_tokens=256)
    for n in (1, 16, 32, 64):
        spec.cost.observe(n, 0.040 + 0.002 * n)  # a sure draft pays, one at a rate of 0.5 never does
    batch = [seq(f"r{i}", [7, 1, 2, 3, 7, 4, 5], [9, 9, 7]) for i in range(16)]  # own 1-token matches
    drafts = spec.propose(batch, base_tokens=16)
    assert len(drafts) == PROBES_PER_SOURCE and all(len(t) == PROBE_DEPTH for t in drafts.values())
    for s in batch:
        if s.request_id in drafts:
            spec.verify(s, drafts[s.request_id], sampled=[0] * (PROBE_DEPTH + 1))
    assert spec.acceptance.server_drafts("own") == PROBES_PER_SOURCE
    late = [seq(f"late{i}", [7, 1, 2, 3, 7, 4, 5], [9, 9, 7]) for i in range(4)]
    assert spec.propose(late + batch, base_tokens=20) == {}  # the source's rates are known: no probes


def test_where_no_draft_can_pay_the_speculator_skips_the_step_and_the_global_trie_still_learns() -> None:
    """A batch-16 step on a CPU: each draft node costs about what a plain token does, so not even a
    draft taken whole pays (drafts_can_pay), and the speculator neither matches, plans nor probes.
    One sequence alone on the same curve could pay. A request that finished in such steps still
    gives its output to the global trie (Speculator.finish), so a later one drafts from it."""
    cpu16 = StepCostModel()
    for n, ms in ((1, 19.4), (2, 20.0), (4, 27.9), (8, 48.2), (16, 84.2), (32, 165.9), (64, 310.4)):
        cpu16.observe(n, ms / 1000)
    assert not drafts_can_pay(16, 16, cpu16, 16 * 32, 600)
    assert drafts_can_pay(1, 1, cpu16, 32, 600)
    spec = Speculator(max_depth=8, width=1, max_step_tokens=256)
    spec.cost = cpu16
    batch = [seq(f"r{i}", [5, 6, 7, 8, 5, 6, 7], [8, 5, 6]) for i in range(16)]
    assert spec.propose(batch, base_tokens=16) == {}
    assert spec.drafter.local == {} and spec.stats.num_drafts == 0  # nothing observed, nothing probed
    done = seq("done", [1, 2], [40, 41, 42, 43, 44, 45])
    spec.finish(done)
    later = seq("later", [9, 40, 41], [])
    spec.drafter.observe("later", later.all_ids, later.num_prompt)
    assert spec.drafter.propose("later", later.all_ids, 4, 4).tokens[:3] == [42, 43, 44]
    assert "done" not in spec.drafter.local

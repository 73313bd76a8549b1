"""Acceptance by match class: what the drafter would match, per-class estimates with a server-wide
prior, and the speculator sizing each request's draft by its match."""
from __future__ import annotations

import pytest

from engine.lookahead.acceptance import CUT, FIRST, WHOLE, AcceptanceModel
from engine.lookahead.budget import StepCostModel
from engine.lookahead.drafter import Drafter, DrafterConfig, Match
from engine.lookahead.speculator import Speculator
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


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

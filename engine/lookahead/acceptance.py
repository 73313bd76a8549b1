"""How much of a draft the model will take, by the kind of match that made it.

A draft's first branch comes from a match: the request's own text (prompt and output) or every
request's outputs (``source``), under a key of the last k tokens. How much of it the model accepts
depends mostly on that match, and then on whether the request's previous draft was taken whole.
Measured on the bundled model (bf16, 20 prompts each, greedy):

    chat (ShareGPT)       1-token key, own text, after a cut draft   66-74% rejected outright, 0.5-0.7 of 2-3 taken
                          1-token key, all outputs                   84% rejected, 0.2 of 2.4
                          3-token key, own text, after a whole one   24% rejected, 2.6 of 4.1
    code edits            1-token key, own text, after a cut draft   38-67% rejected, 1.6-1.7 of 7
                          3-token key, own text, after a whole one   10% rejected, 7.7 of 11.6

So a request keeps one acceptance estimate per class = (source, key length, previous draft), and
the server keeps one per class across requests. A request's first draft of a class starts from the
server's estimate (worth ``prior_weight`` drafts): a new request in a copy-heavy workload drafts
deep from its first step, and a 1-token match in chat drafts little or nothing, while each request
still learns its own rates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# previous draft of the request: none verified yet, taken whole, cut short
FIRST, WHOLE, CUT = 0, 1, 2
DraftClass = tuple[str, int, int]  # (source: "own" | "global" | "number", key length, previous draft)


@dataclass(slots=True)
class Acceptance:
    """Per-token acceptance rho of a run of drafts: accepted / (accepted + misses), a truncated-
    geometric estimate (a draft of depth D then gains about rho (1 - rho^D) / (1 - rho) tokens)."""

    accepted: float = 1.0  # decayed sums, optimistic prior so new classes are probed
    misses: float = 1.0
    drafts: int = 0  # drafts verified (not decayed): how much the estimate rests on

    @property
    def rho(self) -> float:
        return self.accepted / (self.accepted + self.misses)

    def update(self, accepted: int, depth: int, decay: float = 0.9) -> None:
        self.accepted = decay * self.accepted + accepted
        self.misses = decay * self.misses + (1.0 if accepted < depth else 0.0)
        self.drafts += 1

    def idle(self, decay: float = 0.98) -> None:
        """Not drafted this step: drift back towards the prior so the class is probed again later."""
        self.misses = max(0.5, self.misses * decay)


@dataclass(slots=True)
class BranchYield:
    """Tokens a tree's other branches win per node over its first branch (the chain a width-1
    draft would have been): decayed sums. Measured on the bundled model at c=1, bf16, trees of
    width 2 (6 prompts each): 0.10-0.13 a node server-wide, most of it from requests whose first
    branch is often taken (a request drafting from a 1-token match gets little from its others)."""

    accepted: float = 1.0
    nodes: float = 10.0

    @property
    def per_node(self) -> float:
        return self.accepted / self.nodes

    def update(self, extra_accepted: int, extra_nodes: int, decay: float = 0.9) -> None:
        if extra_nodes <= 0:
            return
        self.accepted = decay * self.accepted + extra_accepted
        self.nodes = decay * self.nodes + extra_nodes


@dataclass(slots=True)
class RequestAcceptance:
    by_class: dict[DraftClass, Acceptance] = field(default_factory=dict)
    branches: BranchYield | None = None  # what its trees' other branches won (None: none verified)
    previous: int = FIRST  # how the request's last verified draft went
    verified: int = 0  # drafts verified so far
    pending: DraftClass | None = None  # the class of the draft now in flight


class AcceptanceModel:
    def __init__(self, prior_weight: float = 2.0, server_decay: float = 0.99,
                 branch_prior_nodes: float = 8.0) -> None:
        self.prior_weight = prior_weight
        self.server_decay = server_decay  # ~100 drafts of memory: the workload, not one request
        self.server: dict[DraftClass, Acceptance] = {}
        self.server_branches = BranchYield()
        self.branch_prior_nodes = branch_prior_nodes  # the server's yield, worth this many nodes
        self.requests: dict[str, RequestAcceptance] = {}

    def draft_class(self, request_id: str, source: str, key_length: int) -> DraftClass:
        req = self.requests.setdefault(request_id, RequestAcceptance())
        return source, key_length, req.previous

    def verified(self, request_id: str) -> int:
        req = self.requests.get(request_id)
        return req.verified if req is not None else 0

    def _estimate(self, request_id: str, cls: DraftClass) -> Acceptance:
        req = self.requests.setdefault(request_id, RequestAcceptance())
        est = req.by_class.get(cls)
        if est is None:  # the server's rate for the class, worth prior_weight drafts
            rho = self.server.setdefault(cls, Acceptance()).rho
            est = req.by_class[cls] = Acceptance(self.prior_weight * rho, self.prior_weight * (1.0 - rho))
        return est

    def rho(self, request_id: str, cls: DraftClass) -> float:
        return self._estimate(request_id, cls).rho

    def server_drafts(self, source: str) -> int:
        """Drafts from matches in ``source`` verified server-wide (all classes): how well the
        workload's rates for it are known."""
        return sum(est.drafts for cls, est in self.server.items() if cls[0] == source)

    def branch_yield(self, request_id: str) -> float:
        """Tokens a node of the request's trees' other branches is expected to win."""
        req = self.requests.get(request_id)
        own = req.branches if req is not None else None
        return own.per_node if own is not None else self.server_branches.per_node

    def branches_verified(self, request_id: str, extra_accepted: int, extra_nodes: int) -> None:
        """A tree's other branches (``extra_nodes`` of them) won ``extra_accepted`` tokens over its first."""
        if extra_nodes <= 0:
            return
        req = self.requests.setdefault(request_id, RequestAcceptance())
        if req.branches is None:  # starts from the server's yield
            y, w = self.server_branches.per_node, self.branch_prior_nodes
            req.branches = BranchYield(y * w, w)
        req.branches.update(extra_accepted, extra_nodes)
        self.server_branches.update(extra_accepted, extra_nodes, decay=self.server_decay)

    def drafted(self, request_id: str, cls: DraftClass) -> None:
        """A draft of class ``cls`` goes into this step (``update`` learns from it after the step)."""
        self.requests.setdefault(request_id, RequestAcceptance()).pending = cls

    def idle(self, request_id: str, cls: DraftClass) -> None:
        """The request had a match of ``cls`` but drafts nothing this step."""
        self._estimate(request_id, cls).idle()

    def update(self, request_id: str, accepted: int, depth: int, whole: bool | None = None) -> None:
        """The draft in flight (``drafted``) was verified: ``accepted`` of the ``depth`` tokens of its
        first branch taken (the chain its rate describes); ``whole``: some branch was taken to its
        end (default: the first)."""
        req = self.requests.setdefault(request_id, RequestAcceptance())
        cls = req.pending
        if cls is not None:
            self._estimate(request_id, cls).update(accepted, depth)
            self.server.setdefault(cls, Acceptance()).update(accepted, depth, decay=self.server_decay)
        req.pending = None
        req.verified += 1
        req.previous = WHOLE if (accepted >= depth if whole is None else whole) else CUT

    def forget(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

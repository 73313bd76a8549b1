"""Adaptive draft sizes from measured step costs and each request's acceptance.

The engine times its steps by total token count (calibrated at start, refined online) plus a
per-key-read term: a draft node attends to its sequence's whole context, so the same draft costs
more behind 2,000 tokens than behind 200. Each request's per-token acceptance rho comes from
engine.lookahead.acceptance (by the kind of match its draft would come from). A draft of depth D
then gains about rho (1 - rho^D) / (1 - rho) tokens. Depths are handed out greedily while they
raise the batch's expected tokens per second, so a batch whose drafts miss decodes at plain cost
and a copy-heavy one drafts deep. A draft's expected tokens count at (1 - RISK); where not even a
draft taken whole could pay (``drafts_can_pay``), the speculator does no drafting work at all.
Drafts are chains or trees of several branches, whichever plan is faster (``plan_drafts``): a
tree's other branches are priced at their nodes and the tokens a node of them wins (measured).
"""
from __future__ import annotations


# An observed step counts for at most SPIKE times what the model expected of it. On a shared
# machine a step now and then takes several times its cost (seen here: a 15 ms product pass at a
# p90 of 114 ms and a max of 356 while a neighbour ran): unclipped, one such step moved its bucket's
# point by up to 70% (alpha 0.1), and the planner priced wide or narrow steps by whichever bucket
# the last spike hit. A lasting change still comes through, by up to 5% a step.
SPIKE = 1.5


class StepCostModel:
    """Seconds per step: f(query tokens) plus ``per_key_read`` seconds per key read (a step reads,
    over its sequences, query tokens x keys). ``per_key_read`` comes from calibration
    (engine.llm_engine); f is refined online from each step's time less its key-read term.

    f is piecewise linear through one point per power-of-two bucket of token counts: the running
    means of the tokens and the seconds of the steps that fell in it. A bucket's point stays where
    its steps were (a 17-token step moves the (16, 32] point towards 17 tokens, not to 32), so the
    curve never prices wide steps at what narrower ones cost.

    ``per_context_key``: seconds per cached key of each sequence in the step, paid once per
    sequence whatever its query rows (its keys and values streamed from memory for the first row;
    more rows are ``per_key_read``). Calibrated with several sequences behind a long context
    against a short one (engine.llm_engine). Without it the stream lands in f: on an Intel Xeon
    in bf16, 16 code-edit decodes behind ~600 tokens spent ~30 ms a step in attention, the
    16-token point rose to 65 ms and a 6-token step's to 45, so f looked 3-4 ms a token steep and
    the last requests of a batch (5-9 left, acceptance 0.6-0.9) drafted nothing.

    ``group_overhead``: what a step pays when some of its decoding sequences draft and others do
    not, beyond its tokens and key reads: a backend that pads groups attends trees apart from the
    plain decodes (engine.attention.grouping), one more group in every layer. Calibrated at start
    (engine.llm_engine); 0 for a backend without groups. bf16 on 2 cores: ~2.7 ms, against ~10% of
    a 37 ms step that a chat request's draft wins at batch 4.

    ``draft_factor``: how much more a step's drafts cost than priced, learned from decoding steps
    (``observe_step``): the running mean of actual / priced seconds over steps with drafts, over
    the same for steps without. The planner multiplies the extra cost of drafting by it. At batch
    16 behind contexts of 1-3.5k tokens in bf16, steps with drafts ran at 2.5x their price and
    plain ones at 1.2x (trees in padded groups, attention in fp64): priced as calibrated, chat ran
    at 0.85x of lookahead off. Steps without drafts pull it back towards 1, so drafting is tried
    again later rather than never.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        self.points: dict[int, tuple[float, float]] = {}  # bucket -> (mean tokens, mean seconds)
        self.alpha = alpha
        self.per_key_read = 0.0
        self.per_context_key = 0.0
        self.group_overhead = 0.0
        self.draft_factor = 1.0
        self._ratio: dict[bool, float] = {}  # drafted? -> running mean of actual / priced seconds
        self._curve: list[tuple[float, float]] | None = None  # the points by tokens; None after an observe
        self._memo: dict[int, float] = {}  # tokens -> f(tokens) on the current curve

    def observe(self, tokens: int, seconds: float, key_reads: int = 0, context_keys: int = 0) -> None:
        keys = self.per_key_read * key_reads + self.per_context_key * context_keys
        step, seconds = seconds, max(seconds - keys, 1e-6)
        b = 1 << max(0, (tokens - 1).bit_length())  # bucket (b/2, b]: next power of two
        old = self.points.get(b)
        if self.points:
            f = self.token_cost(tokens)
            if old is not None:  # a spell of the machine's (a neighbour's burst) moves the point a little
                seconds = min(seconds, SPIKE * f)
            # nor does a step the key terms overprice: what is left of it is not its tokens' cost,
            # and one such point (a 2,048-token prefill chunk left at 0 when its key reads were
            # counted as q x (cached + q)) priced every narrower step at 0 (the curve never falls)
            # and stayed there (the clip above): drafts cost only their key reads, and chat at c=16
            # drafted at 0.92x of off. A point falls at most to 1 / SPIKE of the curve; a new one to
            # 1 / SPIKE of the step's share the curve would give its tokens.
            seconds = max(seconds, (f if old is not None else step * f / (f + keys)) / SPIKE)
        self._curve = None
        self._memo.clear()
        if old is None:
            self.points[b] = (float(tokens), seconds)
        else:
            a = self.alpha
            self.points[b] = ((1 - a) * old[0] + a * tokens, (1 - a) * old[1] + a * seconds)

    def invalidate(self) -> None:
        """Forget the curve built from the points (after they were set from outside)."""
        self._curve = None
        self._memo.clear()

    def observe_step(self, drafted: bool, seconds: float, price: float, relax: float = 0.98) -> None:
        """A decoding step's forward took ``seconds`` where it was priced at ``price``."""
        ratio = seconds / max(price, 1e-9)
        old = self._ratio.get(drafted)
        if old is not None:
            ratio = min(ratio, SPIKE * old)
        self._ratio[drafted] = ratio if old is None else (1 - self.alpha) * old + self.alpha * ratio
        if not drafted and True in self._ratio:  # relax towards plain steps' ratio: drafts get retried
            self._ratio[True] = self._ratio[False] + relax * (self._ratio[True] - self._ratio[False])
        if len(self._ratio) == 2:
            self.draft_factor = max(1.0, self._ratio[True] / self._ratio[False])

    def cost(self, tokens: int, key_reads: int = 0, extra_group: bool = False, context_keys: int = 0) -> float:
        return (self.token_cost(tokens) + self.per_key_read * key_reads + self.per_context_key * context_keys
                + (self.group_overhead if extra_group else 0.0))

    def token_cost(self, tokens: int) -> float:
        """f(tokens): a step's seconds without its key reads, context and group terms."""
        cached = self._memo.get(tokens)
        if cached is None:
            cached = self._memo[tokens] = self._interpolate(tokens)
        return cached

    def _interpolate(self, tokens: int) -> float:
        if not self.points:
            return float(tokens)  # uncalibrated: assume linear (drafts then only pay off when accepted)
        if self._curve is None:  # the planner prices many candidate steps between two observes
            pts = [self.points[b] for b in sorted(self.points)]  # buckets are disjoint: x ascends too
            # a wider step never costs less than a narrower one: a point above a wider one (steps
            # slowed by another process) is capped at it, so drafts never look cheaper than none
            for i in range(len(pts) - 2, -1, -1):
                pts[i] = (pts[i][0], min(pts[i][1], pts[i + 1][1]))
            self._curve = pts
        pts = self._curve
        x0, y0 = pts[0]
        if tokens <= x0:
            return y0
        for x1, y1 in pts[1:]:
            if tokens <= x1:
                return y0 + (y1 - y0) * (tokens - x0) / max(x1 - x0, 1e-9)
            x0, y0 = x1, y1
        return y0 * tokens / x0  # past the widest step seen: linear from it


class FreeWideSteps(StepCostModel):
    """A cost model that calls every step width equally cheap and learns no curve: a speculator
    given it drafts as wide as its budget allows (tests and launcher.engine_fuzz, which are about
    verification, not the budget)."""

    def observe(self, tokens: int, seconds: float, key_reads: int = 0, context_keys: int = 0) -> None:
        pass

    def cost(self, tokens: int, key_reads: int = 0, extra_group: bool = False, context_keys: int = 0) -> float:
        return 1.0

    def token_cost(self, tokens: int) -> float:
        return 1.0


def key_reads(num_cached: int, query_tokens: int) -> int:
    """Keys a sequence's query tokens read in one step: each sees the cached ones and the step's
    own up to itself (a prefill chunk's causal triangle; a tree node's ancestors come before it, and
    the attention kernels read no key past a row's chunk of the step)."""
    return query_tokens * num_cached + query_tokens * (query_tokens + 1) // 2


def expected_accepted(rho: float, depth: int) -> float:
    if depth <= 0:
        return 0.0
    if rho >= 0.999:
        return float(depth)
    return rho * (1 - rho**depth) / (1 - rho)


DEPTHS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # the depths tried (and max_depth)
# A step drafts only if its plan lifts the expected rate of the whole step by this share over no
# drafts: what the price leaves out (verification, the estimates' noise) makes a plan that only
# breaks even a loss. Chat at c=16 (15-25 ms steps, drafts accepted ~35%): drafting broke even on
# steps, and the step ran at 0.82-0.97x of lookahead off.
MIN_GAIN = 0.03
# Each draft's expected tokens count at (1 - RISK) of their estimate: the planner picks the
# requests whose rates look best, and those look better than they are (seen: 16 code edits at
# c=16, bf16, 2 cores, rates 0.91-0.99 took 0.66-0.87 of their expected tokens over the first
# decoding steps). Where a draft token costs nearly a plain one (batch 16 on a CPU: ~5.7 ms a node
# against 6.1 a plain token, so only a >93% rate pays), this keeps drafts out; where drafts are
# nearly free (batch 1, a GPU) it shortens few.
RISK = 0.1


def plan_depths(rhos: list[float], base_tokens: int, cost: StepCostModel, max_depth: int,
                width: int, max_step_tokens: int, kv_lens: list[int] | None = None,
                base_key_reads: int = 0, context_keys: int = 0) -> list[int]:
    """Draft depth per request maximizing expected tokens per second of the whole step, each draft
    priced as a tree of depth x width nodes whose gain is its first branch's (``plan``)."""
    n = len(rhos)
    return plan(rhos, base_tokens, cost, max_depth, [[width]] * n, max_step_tokens, kv_lens, base_key_reads,
                context_keys)[1]


def drafts_can_pay(num_decodes: int, base_tokens: int, cost: StepCostModel, max_nodes: int, min_kv: int,
                   base_key_reads: int = 0, context_keys: int = 0) -> bool:
    """Whether any plan of up to ``max_nodes`` draft nodes could beat no drafts, were every node
    taken (a plan of e nodes gains at most (1 - RISK) e tokens and pays its tokens' cost plus at
    least ``min_kv`` key reads a node): when none could (a CPU at batch 16, where a node costs
    nearly a plain token), the speculator skips matching and planning altogether (1.2-1.5 ms of
    a 75-100 ms step there, its trie feeding included: ~2% of lookahead-off's rate). Chat at c=16 in bf16
    on 2 AVX2 cores (contexts of 100-170 tokens): 58 of 63 steps skipped. Behind longer contexts
    a plain token costs more (each sequence's context stream), a sure draft would pay a little,
    and the plan decides (code edits at c=16, 200-270 tokens: no step skipped). The bound is a
    ratio of linear functions on each piece of the cost curve, so its best is at a piece's end:
    those and the limits are tried."""
    if num_decodes <= 0 or max_nodes <= 0:
        return False
    plain = cost.cost(base_tokens, base_key_reads, context_keys=context_keys)
    t0, per_node = cost.token_cost(base_tokens), cost.per_key_read * min_kv
    need = (1 + MIN_GAIN) * num_decodes / plain
    ends = {1, max_nodes} | {int(x) - base_tokens for x, _ in cost.points.values()}
    for e in sorted(x for x in ends if 1 <= x <= max_nodes):
        for nodes in {e, e - 1} - {0}:  # each side of a bend (the curve's points sit at mean token counts)
            extra = cost.token_cost(base_tokens + nodes) - t0 + per_node * nodes
            if (num_decodes + (1 - RISK) * nodes) / (plain + max(extra, 0.0)) > need:
                return True
    return False


def plan_drafts(rhos: list[float], base_tokens: int, cost: StepCostModel, max_depth: int,
                width: int, max_step_tokens: int, kv_lens: list[int] | None = None,
                base_key_reads: int = 0, context_keys: int = 0,
                branch_yields: list[float] | None = None) -> tuple[list[int], list[int]]:
    """(depths, widths) per request: each draft a chain (width 1) or a tree of up to ``width``
    branches, whichever makes the step faster. A tree's other branches add (width - 1) x depth
    nodes and gain ``branch_yields[i]`` tokens a node (measured per request: AcceptanceModel).
    Where width is nearly free (batch 1 on a CPU, a GPU) the branches ride along; at batch 16 on
    a CPU each node is ~1.5% of a step and chains win (code-edit c=16, bf16: chains 1.54x over
    off, trees of width 2 1.34x)."""
    n = len(rhos)
    yields = branch_yields if branch_yields is not None else [0.0] * n
    chains = plan(rhos, base_tokens, cost, max_depth, [[1]] * n, max_step_tokens, kv_lens, base_key_reads,
                  context_keys)
    if width <= 1 or max(yields, default=0.0) <= 0.0:
        return chains[1], [1] * n
    # a branch node pays only if it wins more than the step's rate times its price: where a node
    # costs more than that for every request (batch 16 on a CPU: ~1 ms against ~0.1 tokens at
    # ~400 tokens/s), trees cannot win and are not tried (the planner is a few ms a step there)
    tokens = base_tokens + sum(chains[1])
    lens = kv_lens if kv_lens is not None else [0] * n
    reads = base_key_reads + sum(d * k for d, k in zip(chains[1], lens))
    mean_kv = sum(lens) // max(n, 1)
    node = (cost.cost(tokens + width, reads + width * mean_kv, context_keys=context_keys)
            - cost.cost(tokens, reads, context_keys=context_keys)) / width * cost.draft_factor
    if max(yields) < node * chains[0]:
        return chains[1], [1] * n
    options = [[1, width] if y >= node * chains[0] else [1] for y in yields]
    rate, depths, widths = plan(rhos, base_tokens, cost, max_depth, options, max_step_tokens, kv_lens,
                                base_key_reads, context_keys, yields)
    return (depths, widths) if rate > chains[0] else (chains[1], [1] * n)


def plan(rhos: list[float], base_tokens: int, cost: StepCostModel, max_depth: int,
         widths: list[list[int]], max_step_tokens: int, kv_lens: list[int] | None = None,
         base_key_reads: int = 0, context_keys: int = 0,
         branch_yields: list[float] | None = None) -> tuple[float, list[int], list[int]]:
    """(expected tokens per second, depth per request, width per request) of the fastest plan found.

    widths[i]: the widths request i may draft at. base_tokens / base_key_reads: the step's tokens
    and key reads without drafts; a draft of depth D and width W adds D * W nodes, each reading its
    sequence's kv_lens[i] keys, and gains its first branch's expected accepted tokens plus
    ``branch_yields[i]`` for each of the (W - 1) * D other nodes, all counted at (1 - RISK).
    context_keys: the step's sequences' cached keys (each streamed once, drafts or not): part of
    every plan's price. A plan that does not beat no drafts by MIN_GAIN is no drafts.
    """
    kv_lens = kv_lens if kv_lens is not None else [0] * len(rhos)
    yields = branch_yields if branch_yields is not None else [0.0] * len(rhos)
    n = len(rhos)
    levels = sorted({d for d in DEPTHS if d < max_depth} | {max_depth})  # 0 first; max_depth always a level

    plain = cost.cost(base_tokens, base_key_reads, context_keys=context_keys)
    # a plan's extra price over no drafts, as cost.cost(...) - plain but without its calls (the
    # greedy search below prices a few hundred plans a step at batch 16): its tokens' cost on the
    # curve, the keys its nodes read and, where only some decodes draft, the extra group's
    token_cost, t0 = cost.token_cost, cost.token_cost(base_tokens)
    per_read, factor, group_cost = cost.per_key_read, cost.draft_factor, cost.group_overhead

    def rate(g: float, e: int, r: int, drafting: int, group: bool) -> float:
        extra_group = group_cost if group and 0 < drafting < n else 0.0
        return g / (plain + factor * (token_cost(base_tokens + e) - t0 + per_read * r + extra_group))

    # each request's options (nodes, expected tokens, depth, width), by nodes: option 0 drafts nothing
    options: list[list[tuple[int, float, int, int]]] = []
    for rho, ws, y in zip(rhos, widths, yields):
        opts = [(0, 0.0, 0, 1)]
        if rho > 0.0:  # else nothing to expect (no cache continues it): no depth can pay
            opts += sorted((d * w, (1 - RISK) * (expected_accepted(rho, d) + y * (w - 1) * d), d, w)
                           for d in levels[1:] for w in ws)
        options.append(opts)
    room = max_step_tokens - base_tokens  # draft nodes the step may take
    can_draft = [i for i, opts in enumerate(options) if len(opts) > 1]

    def greedy(group: bool) -> tuple[float, list[int]]:
        """Options handed out one raise at a time while the step's rate rises; ``group``: price the
        extra attention group of a step where some decodes draft and others do not."""
        at = [0] * n  # each request's option
        gain, extra, reads, drafting = float(n), 0, 0, 0
        while True:
            best_rate, best = rate(gain, extra, reads, drafting, group), None
            for i in can_draft:
                opts, k0, kv = options[i], at[i], kv_lens[i]
                e0, g0 = opts[k0][0], opts[k0][1]
                now_drafting = drafting + (k0 == 0)
                for k in range(k0 + 1, len(opts)):  # any bigger option: a jump can pay off where one step does not
                    de = opts[k][0] - e0
                    if extra + de > room:
                        break
                    dg = opts[k][1] - g0
                    if dg <= 0.0:  # as many nodes or more for no more tokens
                        continue
                    r = rate(gain + dg, extra + de, reads + de * kv, now_drafting, group)
                    if r > best_rate:  # the first of the fastest, if faster than the plan so far
                        best_rate, best = r, (i, k, dg, de)
            if best is None:
                return rate(gain, extra, reads, drafting, True), at
            i, k, dg, de = best
            drafting += at[i] == 0
            at[i], gain, extra, reads = k, gain + dg, extra + de, reads + de * kv_lens[i]

    best = greedy(True)
    if cost.group_overhead > 0 and n > 1:
        # one raise at a time never sees that drafting *every* request saves the group again: also
        # plan as if groups were free, and keep whichever plan is faster at the true price
        free = greedy(False)
        best = free if free[0] > best[0] else best
    r, at = best if best[0] > (1 + MIN_GAIN) * n / plain else (n / plain, [0] * n)
    return r, [opts[k][2] for opts, k in zip(options, at)], [opts[k][3] for opts, k in zip(options, at)]

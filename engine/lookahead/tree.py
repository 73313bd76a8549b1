"""Token trees: branches merged so shared prefixes are computed once, and the verification walk.

A draft tree hangs under the sequence's last token. In the step input that token is node 0 and the
draft nodes follow in order, so ``parents`` uses step-input indices (node 0's parent is -1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(slots=True)
class DraftTree:
    tokens: list[int] = field(default_factory=list)  # draft nodes, a parent always before its child
    parents: list[int] = field(default_factory=list)  # index of the parent draft node, -1 = the last token
    _index: dict[tuple[int, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> int:
        depth = [0] * len(self.tokens)
        for i, p in enumerate(self.parents):
            depth[i] = 1 + (depth[p] if p >= 0 else 0)
        return max(depth, default=0)

    def first_branch(self) -> int:
        """Nodes of the first branch merged (nodes 0, 1, .. each the child of the one before)."""
        n = 0
        while n < len(self.parents) and self.parents[n] == n - 1:
            n += 1
        return n

    def add_branch(self, path: Sequence[int], budget: int) -> None:
        """Merges ``path`` (tokens after the last token) into the tree, within ``budget`` nodes."""
        parent = -1
        for tok in path:
            node = self._index.get((parent, tok))
            if node is None:
                if len(self.tokens) >= budget:
                    return
                node = len(self.tokens)
                self.tokens.append(tok)
                self.parents.append(parent)
                self._index[(parent, tok)] = node
            parent = node

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` draft nodes: the strongest branches were merged first, and a parent
        always comes before its children, so what is left is still a tree."""
        for i in range(n, len(self.tokens)):
            del self._index[(self.parents[i], self.tokens[i])]
        del self.tokens[n:], self.parents[n:]

    def step_input(self, last_token: int) -> tuple[list[int], list[int]]:
        """(tokens, parents) for the step: the last token as node 0, the drafts under it."""
        return [last_token, *self.tokens], [-1, *[p + 1 if p >= 0 else 0 for p in self.parents]]


def node_paths(tokens: Sequence[int], parents: Sequence[int]) -> list[list[int]]:
    """The step input's (``step_input``) node i -> the draft tokens from the root down to it, node 0's
    empty: what a row that samples after node i has generated beyond the sequence's tokens."""
    paths: list[list[int]] = [[]]
    for i in range(1, len(tokens)):  # parents come before their children
        paths.append(paths[parents[i]] + [tokens[i]])
    return paths


def accept_path(parents: Sequence[int], tokens: Sequence[int], sampled: Sequence[int]) -> tuple[list[int], list[int]]:
    """Walks the tree along the model's own choices.

    ``tokens``/``parents``: the step input (node 0 = the last token); ``sampled[i]``: the token the
    model chose after node i. Returns (path of node indices from 0, tokens to append) where the
    tokens are the model's choices along the path: the matched drafts plus one more.
    """
    children: dict[tuple[int, int], int] = {}
    for i in range(1, len(tokens)):
        children[(parents[i], tokens[i])] = i
    path, out, node = [0], [], 0
    while True:
        choice = sampled[node]
        out.append(choice)
        nxt = children.get((node, choice))
        if nxt is None:
            return path, out
        path.append(nxt)
        node = nxt


def accepted_on_first_branch(path: Sequence[int], first: int) -> int:
    """Drafts of ``path`` (step-input node indices from 0, as accept_path returns) that lie on the
    tree's first branch of ``first`` nodes (step-input nodes 1..first): what a chain would have had."""
    d = 1
    while d < len(path) and d <= first and path[d] == d:
        d += 1
    return d - 1

"""The prefix index: a radix trie over full token blocks, one root per namespace.

An edge is one block of ``block_size`` token ids (a tuple key); a node owns the KV block of the
tokens on the path from its root to itself. ``match`` walks one dict lookup per block, so its cost
is proportional to the matched prefix, never to the size of the store.

Invariants (``check_integrity``): every node is its parent's child under its own key, keys are
exactly ``block_size`` long, depth = parent depth + 1, roots own no block.
"""
from __future__ import annotations

from typing import Iterator, Sequence

BlockKey = tuple[int, ...]  # the block_size token ids of one block


class TrieNode:
    __slots__ = ("key", "parent", "children", "tier", "block", "depth", "namespace", "stamp")

    def __init__(self, key: BlockKey, parent: "TrieNode | None", tier: int, block: int, namespace: str) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[BlockKey, TrieNode] = {}
        self.tier = tier  # index into the store's tiers; -1 for a root
        self.block = block  # row in that tier's pool; -1 for a root
        self.depth = 0 if parent is None else parent.depth + 1  # blocks from the root
        self.namespace = namespace
        self.stamp = 0  # recency, set by TierLRU; larger is more recent

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def attached(self) -> bool:
        """Still reachable from its root (not dropped)."""
        node = self
        while node.parent is not None:
            if node.parent.children.get(node.key) is not node:
                return False
            node = node.parent
        return True

    def __repr__(self) -> str:
        return f"TrieNode(depth={self.depth}, tier={self.tier}, block={self.block})"


def split_blocks(tokens: Sequence[int], block_size: int) -> list[BlockKey]:
    """The full blocks of ``tokens`` as keys; a trailing partial block is dropped."""
    n = len(tokens) // block_size
    return [tuple(tokens[i * block_size:(i + 1) * block_size]) for i in range(n)]


class BlockTrie:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.roots: dict[str, TrieNode] = {}
        self.num_nodes = 0  # excluding roots

    def root(self, namespace: str) -> TrieNode:
        root = self.roots.get(namespace)
        if root is None:
            root = self.roots[namespace] = TrieNode((), None, -1, -1, namespace)
        return root

    def match(self, namespace: str, tokens: Sequence[int]) -> list[TrieNode]:
        """Nodes of the longest cached prefix of ``tokens`` (full blocks), root excluded, in token
        order. Keys are cut as the walk goes: the cost follows the matched prefix, not the prompt."""
        node = self.roots.get(namespace)
        path: list[TrieNode] = []
        if node is None:
            return path
        bs = self.block_size
        for start in range(0, len(tokens) - bs + 1, bs):
            node = node.children.get(tuple(tokens[start:start + bs]))
            if node is None:
                break
            path.append(node)
        return path

    def add_child(self, parent: TrieNode, key: BlockKey, tier: int, block: int) -> TrieNode:
        assert key not in parent.children, "add_child over an existing child"
        assert len(key) == self.block_size, f"key of {len(key)} tokens, block_size {self.block_size}"
        node = TrieNode(key, parent, tier, block, parent.namespace)
        parent.children[key] = node
        self.num_nodes += 1
        return node

    def remove_leaf(self, node: TrieNode) -> None:
        assert not node.children, "only leaves can be removed"
        assert node.parent is not None and node.parent.children.get(node.key) is node, "node not attached"
        del node.parent.children[node.key]
        self.num_nodes -= 1
        root = node.parent
        if root.is_root and not root.children:
            del self.roots[root.namespace]  # an empty namespace costs nothing

    def nodes(self) -> Iterator[TrieNode]:
        """Every non-root node, parents before children."""
        stack = list(self.roots.values())
        while stack:
            node = stack.pop()
            for child in node.children.values():
                yield child
                stack.append(child)

    def check_integrity(self) -> None:
        count = 0
        for ns, root in self.roots.items():
            assert root.is_root and root.block == -1 and root.namespace == ns, f"bad root for {ns}"
        for node in self.nodes():
            count += 1
            parent = node.parent
            assert parent is not None and parent.children.get(node.key) is node, f"{node} not its parent's child"
            assert len(node.key) == self.block_size, f"{node} key has {len(node.key)} tokens"
            assert node.depth == parent.depth + 1, f"{node} depth {node.depth} under depth {parent.depth}"
            assert node.namespace == parent.namespace, f"{node} crosses namespaces"
            assert node.tier >= 0 and node.block >= 0, f"{node} owns no block"
        assert count == self.num_nodes, f"trie counts {self.num_nodes} nodes, holds {count}"

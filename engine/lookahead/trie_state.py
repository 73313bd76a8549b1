"""Lookahead's global n-gram trie kept across a decode worker's restarts (``--lookahead-state
PATH``): saved when the worker shuts down, loaded when it starts, so a rolling restart does not
send it back to drafting from nothing (every output it has seen is what other requests repeat).

Only the trie of requests without a ``cache_salt``: a salt's own trie is its tenant's and dies with
the process. The file names the model it was made for (its KV layout's fingerprint); another
model's, or a broken file, is left unread. One ``.npz`` (no pickle): the roots' keys, then every
node in preorder as (token, count, number of children). Written to PATH.tmp and renamed.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from engine.lookahead.ngram_trie import NGramTrie, TrieNode

logger = logging.getLogger(__name__)

FORMAT = "grove-lookahead-trie/1"


def save_trie(trie: NGramTrie, path: str | Path, model_id: str) -> int:
    """Writes ``trie`` to ``path``; how many nodes (roots included)."""
    path = Path(path)
    key_lens, key_tokens, root_counts, root_children = [], [], [], []
    tokens: list[int] = []
    counts: list[float] = []
    children: list[int] = []
    for key, root in trie.roots.items():
        key_lens.append(len(key))
        key_tokens.extend(key)
        root_counts.append(root.count)
        root_children.append(len(root.children))
        stack: list[tuple[int, TrieNode]] = list(reversed(root.children.items()))
        while stack:  # preorder: a node, then its children's subtrees in order
            tok, node = stack.pop()
            tokens.append(tok)
            counts.append(node.count)
            children.append(len(node.children))
            stack.extend(reversed(node.children.items()))
    header = json.dumps({"format": FORMAT, "model_id": model_id})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, header=np.array(header), key_lens=np.array(key_lens, np.int32),
                 key_tokens=np.array(key_tokens, np.int32), root_counts=np.array(root_counts, np.float32),
                 root_children=np.array(root_children, np.int32), tokens=np.array(tokens, np.int32),
                 counts=np.array(counts, np.float32), children=np.array(children, np.int32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    n = len(key_lens) + len(tokens)
    logger.info("lookahead trie of %d nodes (%d keys) saved to %s", n, len(key_lens), path)
    return n


def load_trie(path: str | Path, model_id: str, max_nodes: int) -> NGramTrie | None:
    """The trie saved at ``path`` for ``model_id`` (None where there is none, or it is not that
    model's or is broken: said in the log)."""
    path = Path(path)
    if not path.exists():
        logger.info("no lookahead trie at %s: it starts empty", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            if header.get("format") != FORMAT or header.get("model_id") != model_id:
                raise ValueError(f"made for {header.get('model_id')!r} ({header.get('format')}), not this "
                                 f"model {model_id!r}")
            arrays = {k: z[k].tolist() for k in ("key_lens", "key_tokens", "root_counts", "root_children",
                                                 "tokens", "counts", "children")}
        trie = NGramTrie(max_nodes)
        at, i = 0, 0
        tokens, counts, children = arrays["tokens"], arrays["counts"], arrays["children"]
        for length, count, below in zip(arrays["key_lens"], arrays["root_counts"], arrays["root_children"]):
            root = trie.root(tuple(arrays["key_tokens"][at:at + length]))
            at += length
            root.count = count
            stack: list[list[object]] = [[root, below]]  # (node, children still to read)
            while stack:
                top = stack[-1]
                if top[1] == 0:
                    stack.pop()
                    continue
                top[1] -= 1  # type: ignore[operator]
                node = trie.child(top[0], tokens[i])  # type: ignore[arg-type]
                node.count = counts[i]
                stack.append([node, children[i]])
                i += 1
        if i != len(tokens) or at != len(arrays["key_tokens"]):
            raise ValueError(f"{len(tokens) - i} nodes or {len(arrays['key_tokens']) - at} key tokens left over")
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:  # (json's too)
        logger.error("lookahead trie %s not loaded, it starts empty: %s", path, e)
        return None
    trie.bound()
    logger.info("lookahead trie of %d nodes loaded from %s", trie.num_nodes, path)
    return trie

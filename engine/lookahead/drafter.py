"""Draft retrieval: each request's own cache (prompt + output) and one global trie (all outputs).

Both update incrementally, with no re-scan of the history. A request's own cache records where
each key occurred (engine.lookahead.position_index: one append per token and key length, so a
long prompt is indexed in a few ms). The global trie counts windows: every new output token
extends each window that ends at it by one step from the node the window had reached (no walk
from the key).

A request with a ``cache_salt`` (vLLM's) reads and feeds its salt's own global trie instead: what
other tenants' requests wrote is never drafted for it (accepted-token counts and step times would
tell whether a guess at their text was right), nor what it writes for them.

A server may also give a corpus (engine.lookahead.corpus): read-only text every request drafts
from, after its own caches (it is the operator's, no tenant's).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from engine.lookahead.corpus import CorpusIndex
from engine.lookahead.ngram_trie import NGramTrie, TrieNode
from engine.lookahead.numbering import DigitVocab, NumberRuns
from engine.lookahead.position_index import PositionIndex
from engine.lookahead.tree import DraftTree


@dataclass(frozen=True, slots=True)
class DrafterConfig:
    key_lengths: tuple[int, ...] = (3, 2, 1)  # context tokens used as the lookup key, longest first
    # the global trie's keys: drafts from 1-token keys in every request's outputs were 84% rejected
    # outright in chat (engine.lookahead.acceptance), and indexing them was a third of its work
    global_key_lengths: tuple[int, ...] = (3, 2)
    window: int = 8  # continuation length stored per position (the deepest draft)
    global_max_nodes: int = 1 << 20
    local_max_positions: int = 16  # a request's own cache: continuations counted per lookup, latest first
    corpus_max_positions: int = 32  # the corpus: continuations counted per lookup, spread over it
    # salted requests' global tries: the salts kept (least recently started dropped), each bounded
    # so that together they hold no more nodes than the shared one
    salted_tries: int = 64
    salted_max_nodes: int = (1 << 20) // 64


@dataclass(slots=True)
class Windows:
    """One token stream's open windows in one trie. A window is up to ``window`` tokens stored
    under a key (the k tokens before it); an open one still grows. For each, the node its tokens so
    far reach: a new token extends it by one step from there, never by a walk from the key."""

    trie: NGramTrie
    fed: int = 0  # tokens indexed so far: every window ending before this is counted
    open: list[tuple[int, TrieNode]] = field(default_factory=list)  # (first token, node reached)
    epoch: int = -1  # the trie's epoch when the nodes were taken (a decay may prune them)


@dataclass(frozen=True, slots=True)
class Match:
    """Where a draft would come from: the first cache and longest key with a continuation."""

    # "prediction": the output the client predicted; "own": the request's prompt and output;
    # "global": every request's outputs; "corpus": the server's corpus; "number": the next number
    source: str
    key_length: int


# where caches continue keys of the same length, the first of these drafts first
_PRIORITY = {"prediction": 0, "own": 1, "global": 2, "corpus": 3}
SOURCES = ("own", "global", "corpus", "prediction", "number")  # every Match.source


@dataclass(slots=True)
class RequestCache:
    own: PositionIndex  # the request's prompt and output
    shared: Windows  # in the global trie: output only
    numbers: NumberRuns | None  # its last numbers (None: the tokenizer's digits are not tokens of their own)
    predicted: PositionIndex | None = None  # the client's predicted output (OpenAI's Predicted Outputs), if any


Source = PositionIndex | NGramTrie | CorpusIndex  # a request's own text or prediction; all outputs; the corpus


class Drafter:
    def __init__(self, config: DrafterConfig = DrafterConfig(), digits: DigitVocab | None = None,
                 corpus: CorpusIndex | None = None) -> None:
        """``corpus``: the server's (engine.lookahead.corpus), drafted from for every request."""
        self.config = config
        self.digits = digits
        self.corpus = corpus
        self.global_trie = NGramTrie(config.global_max_nodes)
        self.salted: OrderedDict[str, NGramTrie] = OrderedDict()  # cache_salt -> its global trie
        self.local: dict[str, RequestCache] = {}

    def shared_trie(self, cache_salt: str = "") -> NGramTrie:
        """The global trie a request reads and feeds: the one of every unsalted request, or its
        salt's own (made on first use; the least recently used salt's is dropped past the limit,
        though requests still running keep feeding theirs)."""
        if not cache_salt:
            return self.global_trie
        trie = self.salted.pop(cache_salt, None)
        if trie is None:
            trie = NGramTrie(self.config.salted_max_nodes)
        self.salted[cache_salt] = trie
        while len(self.salted) > self.config.salted_tries:
            self.salted.popitem(last=False)
        return trie

    def _reopen(self, win: Windows, tokens: Sequence[int]) -> None:
        """Finds the nodes of the windows open at ``win.fed`` (after a decay, or when indexing
        starts mid-stream): nodes missing are made, nothing is counted (it was, or never is)."""
        w, trie, end = self.config.window, win.trie, win.fed
        win.open = []
        for first in range(max(1, end - w + 1), end):
            for k in self.config.global_key_lengths:
                if first - k >= 0:
                    node = trie.root(tuple(tokens[first - k : first]))
                    for tok in tokens[first:end]:
                        node = trie.child(node, tok)
                    win.open.append((first, node))
        win.epoch = trie.epoch

    def _feed(self, win: Windows, tokens: Sequence[int], end: int) -> None:
        """Indexes tokens[win.fed:end] as they arrive: each new token extends every window (of up
        to ``window`` tokens) that ends at it, under each key = the k tokens before the window.
        A path's count is how often key + path occurred (each window adds one to its last node;
        its shorter prefixes were counted as it grew)."""
        w, keys, trie = self.config.window, self.config.global_key_lengths, win.trie
        if win.epoch != trie.epoch:
            self._reopen(win, tokens)
        child = trie.child
        for last in range(win.fed, end):
            tok = tokens[last]
            grown: list[tuple[int, TrieNode]] = []
            for first, node in win.open:  # windows tokens[first .. last - 1] grow by tok
                # trie.child inlined: this loop is most of a decoding step's drafting work
                nxt = node.children.get(tok)
                if nxt is None:
                    nxt = child(node, tok)
                nxt.count += 1.0
                if last - first + 1 < w:
                    grown.append((first, nxt))
            for k in keys:  # a window opens at tok under each key that fits before it
                if last >= k:
                    root = trie.root(tuple(tokens[last - k : last]))
                    root.count += 1.0
                    node = child(root, tok)
                    node.count += 1.0
                    if w > 1:
                        grown.append((last, node))
            win.open = grown
        win.fed = end
        trie.bound()  # a decay here may prune the open windows' nodes: win.epoch now tells _reopen

    def observe(self, request_id: str, tokens: Sequence[int], num_prompt: int, cache_salt: str = "",
                prediction: Sequence[int] = ()) -> None:
        """Indexes what is new in the request's tokens (prompt + output so far); the output also
        goes to the global trie of its ``cache_salt`` (see ``shared_trie``). ``prediction``: the
        output the client predicted, indexed once, at the request's first observation."""
        cache = self.local.get(request_id)
        if cache is None:
            # outputs (not prompts) also feed the global cache: they are what requests tend to repeat
            numbers = NumberRuns(self.digits) if self.digits is not None else None
            predicted = None
            if prediction:
                predicted = PositionIndex(self.config.key_lengths)
                predicted.feed(prediction, len(prediction))
            cache = self.local[request_id] = RequestCache(PositionIndex(self.config.key_lengths),
                                                          Windows(self.shared_trie(cache_salt), fed=num_prompt),
                                                          numbers, predicted)
        if cache.own.fed < len(tokens):
            cache.own.feed(tokens, len(tokens))
            self._feed(cache.shared, tokens, len(tokens))
            if cache.numbers is not None:
                cache.numbers.feed(tokens, len(tokens))

    def forget(self, request_id: str) -> None:
        self.local.pop(request_id, None)

    def retire(self, request_id: str, tokens: Sequence[int], num_prompt: int, cache_salt: str = "") -> None:
        """A finished request: its output not yet indexed goes to the global trie of its salt (the
        steps the speculator skipped did not index it, nor did its last step), then its caches go."""
        cache = self.local.pop(request_id, None)
        win = cache.shared if cache is not None else Windows(self.shared_trie(cache_salt), fed=num_prompt)
        if win.fed < len(tokens):
            self._feed(win, tokens, len(tokens))

    def match(self, request_id: str, tokens: Sequence[int]) -> Match | None:
        """The match ``propose`` would start its tree from (its first branch's), or None when no
        cache continues the text: a few dict lookups, no branches built."""
        cache = self.local.get(request_id)
        if cache is not None and cache.numbers is not None and cache.numbers.counting():
            return Match("number", 0)
        found = self._matches(cache, tokens)
        if found:
            return found[0][0]
        if cache is not None and cache.numbers is not None and cache.numbers.next_tokens(1):
            return Match("number", 0)
        return None

    def _local_key(self, index: PositionIndex, source: str, tokens: Sequence[int]) -> Match | None:
        """The longest key a text of the request's own (its prompt and output, or its prediction) continues."""
        for k in self.config.key_lengths:
            # every recorded position of a key has a continuation (the text's last key is not
            # recorded until the next token comes)
            if len(tokens) >= k and tuple(tokens[-k:]) in index.starts:
                return Match(source, k)
        return None

    def _global(self, cache: RequestCache | None) -> NGramTrie:
        """The global trie of the request's salt (the shared one for a request never observed)."""
        return cache.shared.trie if cache is not None else self.global_trie

    def _global_key(self, cache: RequestCache | None, tokens: Sequence[int]) -> Match | None:
        """The longest key every request's outputs (of the request's salt) continue."""
        trie = self._global(cache)
        for k in self.config.global_key_lengths:
            root = trie.roots.get(tuple(tokens[-k:])) if len(tokens) >= k else None
            if root is not None and root.children:
                return Match("global", k)
        return None

    def propose(self, request_id: str, tokens: Sequence[int], budget: int, max_depth: int) -> DraftTree:
        """A tree of up to ``budget`` draft tokens continuing ``tokens``: the own cache's branches,
        else the global trie's, their line numbers as the text numbers its lines. Where the text
        counts, the numbers come first; where it is at a numbered line no cache continues, the next
        line's number (continued from the tries)."""
        tree = DraftTree()
        if budget <= 0:
            return tree
        cache = self.local.get(request_id)
        numbers = cache.numbers if cache is not None else None
        if numbers is not None and numbers.counting():
            self._add_number(tree, cache, numbers, tokens, budget, max_depth)
        for path in self._branches(cache, tokens, budget, max_depth):
            tree.add_branch(numbers.renumber(path) if numbers is not None else path, budget)
            if len(tree) >= budget:
                return tree
        if numbers is not None and not len(tree):
            self._add_number(tree, cache, numbers, tokens, budget, max_depth)
        return tree

    def _add_number(self, tree: DraftTree, cache: RequestCache, numbers: NumberRuns, tokens: Sequence[int],
                    budget: int, max_depth: int) -> None:
        """The next number, continued by the tries' best branch after it."""
        number = numbers.next_tokens(max_depth)
        if number:
            rest = max_depth - len(number)
            after = self._branches(cache, [*tokens, *number], rest, rest)[:1] if rest > 0 else []
            tree.add_branch(numbers.renumber(number + (after[0] if after else [])), budget)

    def _matches(self, cache: RequestCache | None, tokens: Sequence[int]) -> list[tuple[Match, Source]]:
        """The caches that continue ``tokens``, each with its longest key's match: the longest key
        first; where keys tie, the prediction, then the request's own text, then every request's
        outputs, then the corpus. (A shorter key loses to a longer one: in the Shakespeare answers a 1-token key of
        the own text drafted words the prompt had after "in" (" heaven") where an answer before had
        '" in' -> " the original text".)"""
        found: list[tuple[Match, Source]] = []
        m = self._global_key(cache, tokens)
        if m is not None:
            found.append((m, self._global(cache)))
        if cache is not None:
            for index, source in ((cache.own, "own"), (cache.predicted, "prediction")):
                m = self._local_key(index, source, tokens) if index is not None else None
                if m is not None:
                    found.append((m, index))
        if self.corpus is not None:
            k = next((k for k in self.config.global_key_lengths
                      if len(tokens) >= k and self.corpus.has(tuple(tokens[-k:]))), 0)
            if k:
                found.append((Match("corpus", k), self.corpus))
        return sorted(found, key=lambda f: (-f[0].key_length, _PRIORITY[f[0].source]))

    def _branches(self, cache: RequestCache | None, tokens: Sequence[int], budget: int,
                  max_depth: int) -> list[list[int]]:
        """Continuations of ``tokens``, each cache's from its longest key that has any, the caches
        in ``_matches``' order; up to ``budget`` tokens once merged, best first."""
        tree = DraftTree()
        found: list[list[int]] = []
        for m, source in self._matches(cache, tokens):
            had = len(found)
            key_lengths = self.config.global_key_lengths if m.source in ("global", "corpus") else self.config.key_lengths
            # a cache after one that drafted adds only what its longest key continues: in chat at
            # batch 16, the global trie's 2-token keys beside the own text's branches ran at 0.86x
            # of lookahead off in one round (1.07x over two)
            for k in key_lengths[:1] if found else key_lengths:
                if len(tokens) < k:
                    continue
                key = tuple(tokens[-k:])
                if isinstance(source, NGramTrie):
                    paths = source.branches(key, budget, max_depth)
                elif isinstance(source, CorpusIndex):
                    paths = source.branches(key, budget, max_depth, self.config.corpus_max_positions)
                else:
                    paths = source.branches(key, budget, max_depth, self.config.local_max_positions)
                for path in paths:
                    tree.add_branch(path, budget)
                    found.append(path)
                if len(tree) >= budget:
                    return found
                if len(found) > had:
                    break  # a longer key matched in this cache: shorter keys are noisier
        return found

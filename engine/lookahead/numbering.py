"""Counting and numbered lines: drafts the next number where the text is at its place.

An n-gram cache cannot continue "41\\n42\\n43\\n": each next number is text never seen before.
Nor the number of a list's next line when the model writes its own numbering over what it copies
("1| ...\\n2| ..." where the prompt's lines were 27, 28, ...): the copy breaks at every line. On
the Shakespeare workload one answer in 16 counts and decoded at 1.03 tokens a step; the answers
that quote numbered lines broke at each line.

Per request, ``NumberRuns`` keeps the text's last two numbers (runs of digit tokens), each with the
tokens between it and the number before (its separator), and the last two that began a line. Two
patterns:

- counting: the last two numbers are n - 1 and n, and the text since n is the start of their
  separator ("1\\n2\\n", "1, 2, "): the rest of the separator, n + 1, the separator, n + 2, ...;
- a numbered line: the text is at a line start and the last number that began a line (at most
  ``LEAD`` tokens after a line break: '"1|', '- 2.') was n: n + 1, then the token that followed n.

The text may end inside the next number ("43\\n4"): its digits so far must begin the proposal's.
``renumber`` puts the numbering into a copy the tries draft: numbered lines copied from the prompt,
which the model numbers its own way, then break at no line.

Digits must be tokens of their own (SmolLM2, Qwen2 and Llama 3 spell numbers a digit a token;
``DigitVocab.from_tokenizer`` checks); elsewhere this drafter stays off. Its drafts are verified like
any other, so a wrong guess costs step tokens, never output.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

LEAD = 2  # tokens a line may hold before its number: '"1|' and '- 1.' still begin a line
MAX_DIGITS = 9  # a longer run of digits is an id or a hash, not a count
MAX_GAP = 4  # tokens between two numbers of a count: "\\n", ", ", " and "


@dataclass(frozen=True, slots=True)
class DigitVocab:
    """The tokenizer's digits: token id <-> "0".."9", and its line-break tokens (text ending in a newline)."""

    digit: dict[int, str]  # token id -> its digit
    ids: dict[str, int]  # digit -> the token id that encodes it alone
    newline: frozenset[int]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> DigitVocab | None:
        """None where numbers are not spelled a digit a token (e.g. GPT-2's "43" is one token)."""
        ids: dict[str, int] = {}
        for d in "0123456789":
            enc = tokenizer.encode(d, add_special_tokens=False)
            if len(enc) != 1:
                return None
            ids[d] = enc[0]
        if tokenizer.encode("1234567890", add_special_tokens=False) != [ids[d] for d in "1234567890"]:
            return None
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        newline = frozenset(i for i, t in enumerate(texts) if t.endswith("\n"))
        return cls({i: d for d, i in ids.items()}, ids, newline)


@dataclass(slots=True)
class Number:
    digits: str  # "43"
    gap: tuple[int, ...] | None  # the tokens since the number before it (None: more than MAX_GAP, or none before)
    line_start: bool  # the line's first number, at most LEAD tokens after its break (or the text's start)
    follow: int = -1  # the token after it (-1 while the text ends inside it)

    @property
    def value(self) -> int | None:
        return int(self.digits) if len(self.digits) <= MAX_DIGITS else None


def consecutive(b: Number | None, n: Number | None) -> bool:
    return b is not None and n is not None and b.value is not None and n.value is not None and b.value + 1 == n.value


class NumberRuns:
    """A request's text, fed as it grows (a dict lookup a token): its last two numbers, the last two
    that began lines, the tokens since the last, and the number the text ends inside, if any."""

    def __init__(self, vocab: DigitVocab) -> None:
        self.vocab = vocab
        self.fed = 0  # tokens fed so far
        self.last: Number | None = None  # the last number the text has finished
        self.before: Number | None = None  # the one before it
        self.last_line: Number | None = None  # the last finished number that began a line
        self.line_before: Number | None = None  # the one before it
        self.open: Number | None = None  # the number the text ends inside
        self.gap: list[int] | None = None  # the tokens since the last number (None: more than MAX_GAP, or none yet)
        self.prev = -1  # the last token fed
        self.since_line = 0  # tokens since the last line break
        self.numbered_line = False  # whether a number began since the last line break

    def feed(self, tokens: Sequence[int], end: int) -> None:
        for i in range(self.fed, end):
            self._push(tokens[i])
        self.fed = max(self.fed, end)

    def _push(self, tok: int) -> None:
        d = self.vocab.digit.get(tok)
        if d is not None:
            if self.open is None:
                gap = tuple(self.gap) if self.gap is not None else None
                self.open = Number(d, gap, self.since_line <= LEAD and not self.numbered_line)
                self.numbered_line = True
            else:
                self.open.digits += d
        elif self.open is not None:
            self.open.follow = tok
            if self.open.line_start:
                self.line_before, self.last_line = self.last_line, self.open
            self.before, self.last, self.open = self.last, self.open, None
            self.gap = [tok]
        elif self.gap is not None:
            self.gap.append(tok)
            if len(self.gap) > MAX_GAP:
                self.gap = None
        if tok in self.vocab.newline:
            self.since_line, self.numbered_line = 0, False
        else:
            self.since_line += 1
        self.prev = tok

    def _separator_left(self) -> tuple[int, ...] | None:
        """Where the text counts (its last two numbers are n - 1 and n, and the text since n is the
        start of the separator between them, or the text ends inside a number after that whole
        separator): what is left of the separator before n + 1. None where it does not count."""
        n = self.last
        if not consecutive(self.before, n) or n.gap is None:
            return None
        if self.open is not None:
            return () if self.open.gap == n.gap else None
        if self.gap is None or len(self.gap) > len(n.gap) or n.gap[:len(self.gap)] != tuple(self.gap):
            return None
        return n.gap[len(self.gap):]

    def counting(self) -> bool:
        return self._separator_left() is not None

    def lines_numbered(self) -> bool:
        """Whether the last two numbers that began lines are n - 1 and n, followed by the same token."""
        return consecutive(self.line_before, self.last_line) and self.line_before.follow == self.last_line.follow

    def next_tokens(self, depth: int) -> list[int]:
        """Up to ``depth`` tokens: counting, the rest of the separator, the next number and the
        numbers after it, each after the separator; at a line start after numbered lines, the
        rest of the next line's number and the token after it; else []."""
        if depth <= 0:
            return []
        typed = self.open.digits if self.open is not None else ""
        sep = self._separator_left()
        if sep is not None:
            n, after = self.last, self.last.gap
        elif (self.open.line_start if self.open is not None else self.prev in self.vocab.newline):
            n, after, sep = self.last_line, None, ()
        else:
            return []
        if n is None or n.value is None:
            return []
        width = len(n.digits) if n.digits.startswith("0") else 0  # "007" counts on as "008"
        value = n.value + 1
        text = str(value).zfill(width)
        if not text.startswith(typed):
            return []
        ids = self.vocab.ids
        out = [*sep, *(ids[c] for c in text[len(typed):])]
        if after is None:  # a numbered line: its number, then what followed the last one ("|", ".")
            out.append(n.follow)
        while after is not None and len(out) < depth:  # counting: separator, number, ...
            value += 1
            out += [*after, *(ids[c] for c in str(value).zfill(width))]
        return out[:depth]

    def _copy(self) -> NumberRuns:
        runs = NumberRuns(self.vocab)
        runs.fed, runs.last, runs.before = self.fed, self.last, self.before
        runs.last_line, runs.line_before = self.last_line, self.line_before
        runs.gap = list(self.gap) if self.gap is not None else None
        runs.prev, runs.since_line, runs.numbered_line = self.prev, self.since_line, self.numbered_line
        runs.open = replace(self.open) if self.open is not None else None  # the one a push changes in place
        return runs

    def renumber(self, path: Sequence[int]) -> list[int]:
        """``path`` (a draft continuing the text) with each number that begins a line replaced by
        the one the text's numbering puts there, where its lines are numbered (``lines_numbered``:
        a copy of rows of data, "1,2\\n4,5", keeps its own): a copy of numbered lines whose numbers
        the model writes anew ("1| ..." where the prompt said "27| ...") then breaks at no line."""
        digit, newline = self.vocab.digit, self.vocab.newline
        if digit.keys().isdisjoint(path):  # most drafts hold no digit: no copy of the state
            return list(path)
        runs, out, i = self._copy(), [], 0
        while i < len(path):
            if path[i] in digit and runs.open is None and runs.prev in newline and runs.lines_numbered():
                j = i
                while j < len(path) and path[j] in digit:
                    j += 1
                want = runs.next_tokens(MAX_DIGITS + 2)
                k = 0
                while k < len(want) and want[k] in digit:
                    k += 1
                run = want[:k] if k else path[i:j]
                for tok in run:
                    runs._push(tok)
                out += run
                i = j
                continue
            runs._push(path[i])
            out.append(path[i])
            i += 1
        return out[:len(path)]  # never deeper than the draft it stands for ("\n9" -> "\n10" at its end)

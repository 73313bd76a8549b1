"""Drafting the next number: counting, numbered lines, renumbered copies (engine.lookahead.numbering),
on the bundled model's real tokenizer, and the drafter's tree with them."""
from __future__ import annotations

from typing import Any

import pytest

from engine.lookahead.drafter import Drafter, DrafterConfig
from engine.lookahead.numbering import DigitVocab, NumberRuns
from engine.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer: Any) -> DigitVocab:
    v = DigitVocab.from_tokenizer(tokenizer)
    assert v is not None
    return v


def runs_over(tokenizer: Any, vocab: DigitVocab, text: str) -> NumberRuns:
    ids = tokenizer.encode(text, add_special_tokens=False)
    runs = NumberRuns(vocab)
    for end in range(0, len(ids) + 1, 3):  # fed as a text grows, a few tokens at a time
        runs.feed(ids, end)
    runs.feed(ids, len(ids))
    return runs


def test_digit_vocab_of_real_tokenizers(tokenizer: Any, qwen_dir: Any) -> None:
    for tok in (tokenizer, load_tokenizer(qwen_dir)):
        v = DigitVocab.from_tokenizer(tok)
        assert v is not None
        assert {tok.decode([i]) for i in v.digit} == set("0123456789")
        assert all(v.digit[v.ids[d]] == d for d in "0123456789")
        newline = tok.encode("a\nb", add_special_tokens=False)[1]
        assert newline in v.newline and v.ids["1"] not in v.newline


class MergingTokenizer:
    """A stand-in for a BPE that spells "12" as one token (GPT-2's): numbering must stay off."""

    vocab = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "6": 5, "7": 6, "8": 7, "9": 8, "0": 9, "12": 10, "\n": 11}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, i = [], 0
        while i < len(text):
            two = text[i:i + 2]
            if two in self.vocab:
                out.append(self.vocab[two])
                i += 2
            else:
                out.append(self.vocab[text[i]])
                i += 1
        return out

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        inv = {v: k for k, v in self.vocab.items()}
        return ["".join(inv[i] for i in x) for x in ids]

    def __len__(self) -> int:
        return len(self.vocab)


def test_a_tokenizer_that_merges_digits_gets_no_numbering() -> None:
    assert DigitVocab.from_tokenizer(MergingTokenizer()) is None


@pytest.mark.parametrize("text, depth, expected", [
    ("1\n2\n3\n", 8, "4\n5\n6\n7\n"),  # counting, one a line
    ("8\n9\n10\n1", 8, "1\n12\n13\n"),  # the text ends inside the next number
    ("007\n008\n", 8, "009\n010\n"),  # leading zeros are kept
    ("1, 2, 3, ", 7, "4, 5, 6"),  # a two-token separator
    ("1, 2, 3,", 7, " 4, 5, "),  # ... the text ends inside it
    ("The passage is:\n\n\"1| foo\n2| bar\n", 8, "3|"),  # numbered lines: the number and what followed the last
    ("\"1| foo\n", 8, "2|"),  # one numbered line so far
    ("1. a\n2. b\n\nSome text\n", 8, "3."),  # a line start after a paragraph
    ("1,2,3\n4,5,6\n", 8, "5,"),  # rows of data: only a line's first number numbers the line
    ("I have 3 apples and 4 pears and ", 8, ""),  # numbers in prose: no pattern
    ("x\n", 8, ""),  # no number yet
    ("1\n2\n3\n", 2, "4\n"),  # depth cuts it
])
def test_next_tokens(tokenizer: Any, vocab: DigitVocab, text: str, depth: int, expected: str) -> None:
    runs = runs_over(tokenizer, vocab, text)
    assert tokenizer.decode(runs.next_tokens(depth)) == expected
    assert len(runs.next_tokens(depth)) <= depth


@pytest.mark.parametrize("text, copy, expected", [
    # the model numbers the lines it quotes from 1; the prompt had them at 27, 28: the copy follows the text
    ("\"1| Even for this\n2| And our dear\n", "27| That by this\n28| That due to", "3| That by this\n4| That due to"),
    # the same numbering: nothing changes
    ("1| a\n2| b\n", "3| c\n4| d", "3| c\n4| d"),
    # rows of data are not numbered lines: a copy keeps its numbers
    ("1,2,3\n4,5,6\n", "7,8,9\n10,11", "7,8,9\n10,11"),
    # a single numbered line is no numbering yet
    ("\"1| Even\n", "27| That", "27| That"),
    # a number cut at the end of the draft: never longer than the draft
    ("1| a\n2| b\n", "3| c\n9", "3| c\n4"),
    ("8| a\n9| b\n", "27| c\n2", "10| c\n1"),
])
def test_renumber(tokenizer: Any, vocab: DigitVocab, text: str, copy: str, expected: str) -> None:
    runs = runs_over(tokenizer, vocab, text)
    path = tokenizer.encode(copy, add_special_tokens=False)
    out = runs.renumber(path)
    assert tokenizer.decode(out) == expected
    assert len(out) <= len(path)


def test_the_drafter_counts_first_and_renumbers_its_copies(tokenizer: Any, vocab: DigitVocab) -> None:
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    d = Drafter(DrafterConfig(), digits=vocab)
    # counting: the numbers are the tree's first branch, its class is "number"
    text = enc("Count:\n1\n2\n3\n")
    d.observe("count", text, 2)
    assert d.match("count", text).source == "number"
    tree = d.propose("count", text, budget=12, max_depth=6)
    assert tokenizer.decode(tree.tokens[:tree.first_branch()]) == "4\n5\n6\n"
    # quoting numbered lines: the own cache copies the prompt's line, renumbered as the answer goes
    prompt = enc("27| Even for this let us divide live\n28| And our dear love lose name of single one\n"
                 "29| That by this separation I may give\n\nQuote them.\n")
    answer = enc("\"1| Even for this let us divide live\n2| And our dear love lose name of single one\n")
    d.observe("quote", prompt + answer, len(prompt))
    tree = d.propose("quote", prompt + answer, budget=8, max_depth=8)
    assert tokenizer.decode(tree.tokens[:tree.first_branch()]).startswith("3| That by this")
    # no number: the drafts are the caches' alone
    d.observe("prose", enc("the cat sat on the mat and the cat"), 3)
    assert d.match("prose", enc("the cat sat on the mat and the cat")).source == "own"

"""vLLM's allowed_token_ids and bad_words (engine.token_rules): the mask, the bans, the words'
token sequences, and the sampler applying them."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.errors import InvalidRequestError
from engine.lookahead.tree import node_paths
from engine.sampling import SamplingBatch, sample
from engine.sampling_params import SamplingParams
from engine.structured import StructuredSpec, apply_bitmask_reference
from engine.token_rules import TokenRules, token_bitmask
from engine.tokenizer import bad_word_ids


@pytest.mark.parametrize("vocab", [31, 32, 33, 64, 49152])
def test_bitmask_allows_exactly_the_ids(vocab: int) -> None:
    ids = sorted({0, vocab - 1, 31 % vocab, 5 % vocab})
    mask = token_bitmask(ids, vocab)
    out = apply_bitmask_reference(torch.zeros(1, vocab), mask, torch.tensor([0]))
    assert torch.isfinite(out[0]).nonzero()[:, 0].tolist() == ids


def test_a_bad_words_last_token_is_banned_after_the_rest() -> None:
    rules = TokenRules(None, ((7,), (1, 2, 3), (4, 3)), 3)
    assert rules.banned([]) == [7]
    assert rules.banned([9, 1, 2]) == [7, 3]
    assert rules.banned([1, 4]) == [7, 3]
    assert rules.banned([2, 1]) == [7]
    assert rules.banned([2]) == [7]


def test_bad_words_read_bare_and_after_a_space(tokenizer: Any) -> None:
    """As vLLM tokenizes them: the word, and " word" where that is as many other tokens."""
    ids = bad_word_ids(tokenizer, ["hello", " world"])
    assert ids[0] == tuple(tokenizer.encode("hello", add_special_tokens=False))
    assert tuple(tokenizer.encode(" hello", add_special_tokens=False)) in ids
    assert tuple(tokenizer.encode("world", add_special_tokens=False)) in ids  # lstripped first
    assert tuple(tokenizer.encode(" world", add_special_tokens=False)) in ids


def test_the_sampler_keeps_to_allowed_tokens_and_avoids_bans() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    allowed = token_bitmask([3, 50, 99], 100).expand(2, -1)
    s = SamplingBatch.build([SamplingParams(temperature=0.0)] * 2 + [SamplingParams(temperature=1.0, seed=1)] * 2,
                            seeds=[1, 1, 2, 2], positions=[5, 5, 5, 5],
                            allowed=(torch.tensor([0, 2]), torch.cat([allowed])), bans=[[], [int(logits[1].argmax())],
                                                                                        [], []])
    out = sample(logits, s).tokens.tolist()
    assert out[0] == max((3, 50, 99), key=lambda t: float(logits[0, t]))
    assert out[1] == int(logits[1].topk(2).indices[1])  # its best banned: the second best
    assert out[2] in (3, 50, 99)


def test_options_are_checked() -> None:
    with pytest.raises(InvalidRequestError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=(-1,))
    with pytest.raises(InvalidRequestError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=(1,), structured=StructuredSpec("regex", "a+"))
    with pytest.raises(InvalidRequestError, match="bad_words"):
        SamplingParams(bad_words=("  ",))
    with pytest.raises(InvalidRequestError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=(5, 100)).check_vocab(100)


def test_a_tree_row_reads_the_drafts_on_its_own_path() -> None:
    """Row i of a tree: the output, then the drafts from the root to node i (not a sibling's)."""
    rules = TokenRules(None, ((5, 6, 7),), 3)
    # node 0: the output's last token; 1: 5 and 2: 8 under it; 3: 6 under node 1
    tokens, parents = [2, 5, 8, 6], [-1, 0, 0, 1]
    assert rules.row_bans([1, 2], node_paths(tokens, parents)) == [[], [], [], [7]]
    tokens, parents = [5, 6, 8], [-1, 0, 0]  # the output ends with 5: its child 6 completes 5, 6
    assert rules.row_bans([4, 5], node_paths(tokens, parents)) == [[], [7], []]
    assert rules.row_bans([5, 6], None) == [[7]]
    assert rules.row_bans([6], None) == [[]]

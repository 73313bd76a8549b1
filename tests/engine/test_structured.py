"""Structured output (engine.structured): grammar masks per row, a tree's rows by their own path,
and the real model's output following a JSON schema, a regex and a choice."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.errors import InvalidRequestError
from engine.structured import Grammars, StructuredSpec, all_allowed, apply_bitmask, apply_bitmask_reference, words
from engine.sampling_params import SamplingParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def grammars(tokenizer: Any, model_dir: Path) -> Grammars:
    from engine.config import ModelConfig

    return Grammars(tokenizer, ModelConfig.from_dir(model_dir).vocab_size)


def _allowed(mask_row: torch.Tensor, vocab: int) -> set[int]:
    logits = apply_bitmask(torch.zeros(1, vocab), mask_row[None], torch.tensor([0]))
    return set(torch.nonzero(logits[0] == 0).flatten().tolist())


def test_mask_follows_the_schema(grammars: Grammars, tokenizer: Any) -> None:
    g = grammars.grammar(StructuredSpec("json_schema", json.dumps(SCHEMA)))
    vocab = grammars.vocab_size
    mask = all_allowed(1, vocab)
    g.fill(mask, 0)
    first = _allowed(mask[0], vocab)
    assert first and all(tokenizer.decode([t]).lstrip().startswith("{") for t in first)
    for t in tokenizer('{"name": "Bo", "age": 7}')["input_ids"]:
        assert g.accept(t)
    assert not g.accept(tokenizer("x")["input_ids"][0])  # refused, state unchanged
    g.fill(mask, 0)
    assert _allowed(mask[0], vocab) <= {tokenizer.eos_token_id, *range(3)}  # only a stop token is left


def test_tree_rows_get_the_mask_of_their_own_path(grammars: Grammars, tokenizer: Any) -> None:
    """Each row of a hand-built tree equals the mask a fresh matcher gives after that node's path;
    a node the grammar refuses (and its subtree) allows everything; the grammar's state is unchanged."""
    spec = StructuredSpec("json_schema", json.dumps(SCHEMA))
    g = grammars.grammar(spec)
    start = tokenizer('{"name": "')["input_ids"]
    for t in start:
        assert g.accept(t)
    bo, age = tokenizer("Bo")["input_ids"][0], tokenizer('",')["input_ids"][0]
    # node 0 = the last token; drafts: Bo -> ", and a branch the grammar refuses (a stop token
    # inside a string) with a child under it
    tokens = [start[-1], bo, age, tokenizer.eos_token_id, bo]
    parents = [-1, 0, 1, 0, 3]
    masks = all_allowed(len(tokens), grammars.vocab_size)
    g.fill_tree(masks, 0, tokens, parents)
    paths = {0: [], 1: [bo], 2: [bo, age]}
    for node, path in paths.items():
        fresh = grammars.grammar(spec)
        for t in start + path:
            assert fresh.accept(t)
        want = all_allowed(1, grammars.vocab_size)
        fresh.fill(want, 0)
        assert torch.equal(masks[node], want[0]), node
    assert (masks[3] == -1).all() and (masks[4] == -1).all()  # unreachable rows allow everything
    again = all_allowed(1, grammars.vocab_size)
    g.fill(again, 0)
    assert torch.equal(again[0], masks[0])


def test_a_draft_past_the_grammars_stop_token_leaves_its_rows_unmasked(grammars: Grammars, tokenizer: Any) -> None:
    """A draft may take the stop token where the grammar is complete and go on (own-text drafts
    of a chat prompt copy "<|im_end|>" and the template after it): the rows at and under it allow
    everything (that path ends the request), the rows before are masked, and the grammar's state
    is unchanged. The finished matcher has no mask to give: asked for one, xgrammar raised."""
    spec = StructuredSpec("choice", '["yes", "no"]')
    g = grammars.grammar(spec)
    yes = tokenizer("yes")["input_ids"]
    for t in yes[:-1]:
        assert g.accept(t)
    eos, after = tokenizer.eos_token_id, tokenizer("\n")["input_ids"][0]
    last = yes[-2] if len(yes) > 1 else tokenizer("Sure")["input_ids"][0]  # node 0: some accepted token
    tokens = [last, yes[-1], eos, after]  # node 0, then yes's last token, the stop token, one more
    parents = [-1, 0, 1, 2]
    masks = all_allowed(len(tokens), grammars.vocab_size)
    g.fill_tree(masks, 0, tokens, parents)
    assert _allowed(masks[1], grammars.vocab_size) <= {eos, *range(3)}  # complete: only a stop token
    assert (masks[2] == -1).all() and (masks[3] == -1).all()
    assert not g.terminated
    again = all_allowed(1, grammars.vocab_size)
    g.fill(again, 0)
    assert torch.equal(again[0], masks[0])


def test_bad_specs_are_invalid_requests(grammars: Grammars) -> None:
    with pytest.raises(InvalidRequestError, match="does not compile"):
        grammars.grammar(StructuredSpec("regex", "(unclosed"))
    with pytest.raises(InvalidRequestError, match="kind"):
        StructuredSpec("yaml", "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(min_tokens=2, structured=StructuredSpec("json"))


@pytest.mark.parametrize("n, rows", [(1, [0]), (5, [1, 3]), (7, list(range(7))), (3, [])])
def test_apply_bitmask_equals_the_torch_reference(n: int, rows: list[int]) -> None:
    vocab = 1000  # not a multiple of 32: the last word's high bits lie past the vocabulary
    gen = torch.Generator().manual_seed(n)
    logits = torch.randn(n, vocab, generator=gen)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (len(rows), words(vocab)), generator=gen, dtype=torch.int64).int()
    idx = torch.tensor(rows, dtype=torch.long)
    got, want = apply_bitmask(logits, bitmask, idx), apply_bitmask_reference(logits, bitmask, idx)
    assert torch.equal(got, want) and torch.equal(logits.isinf(), torch.zeros(n, vocab, dtype=torch.bool))
    others = [r for r in range(n) if r not in rows]
    assert torch.equal(got[others], logits[others])
    if rows:  # about half of each masked row is banned
        assert 0.4 < got[rows].isinf().float().mean().item() < 0.6

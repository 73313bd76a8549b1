"""Structured output: a grammar (JSON, a JSON schema, a regex, a choice of strings, EBNF) that each
sampled token must follow, by xgrammar's token masks.

A request's ``Grammar`` follows its output tokens (``accept``) and gives, for each row it samples,
the tokens allowed there as a bitmask (bit j of word w allows token 32 w + j). A lookahead tree's
row i gets the mask of the state after the drafts on the path to node i (``fill_tree``): each row
is masked as plain decoding would mask it at that position, so verification stays exact.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from engine.errors import InvalidRequestError

Kind = Literal["json", "json_schema", "regex", "choice", "grammar"]
KINDS: tuple[str, ...] = ("json", "json_schema", "regex", "choice", "grammar")
_CACHE_BYTES = 256 << 20  # compiled grammars kept per engine (a schema compiles in ~1-12 ms on 2 cores)


@dataclass(frozen=True, slots=True)
class StructuredSpec:
    """What the output must follow. ``spec``: the schema (JSON text), the regex, the EBNF grammar,
    a JSON list of the choices; empty for ``json`` (any JSON value)."""

    kind: Kind
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidRequestError("structured", f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "json" and not self.spec:
            raise InvalidRequestError("structured", f"a {self.kind} needs its spec")


def words(vocab_size: int) -> int:
    """int32 words of one row's bitmask."""
    return (vocab_size + 31) // 32


def all_allowed(rows: int, vocab_size: int) -> torch.Tensor:
    """[rows, words] int32 bitmask allowing every token (-1 has all 32 bits set)."""
    return torch.full((rows, words(vocab_size)), -1, dtype=torch.int32)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """logits [N, V]; bitmask [len(rows), words]: tokens whose bit is 0 get -inf in those rows.
    Returns a new tensor. xgrammar's kernel (C++ on CPU, CUDA on a GPU): 8x the torch reference
    below at one row, and the reference's [rows, V] unpacked mask would be 50 MB at 256 rows."""
    import xgrammar as xgr

    out = logits.clone()
    full = all_allowed(out.shape[0], out.shape[-1])  # the kernel's indices pick rows of both tensors
    full[rows] = bitmask
    xgr.apply_token_bitmask_inplace(out, full.to(out.device), vocab_size=out.shape[-1], indices=rows.tolist())
    return out


def apply_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """apply_bitmask in torch: unpack each row's bits into a [V] mask."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [R, words, 32], bit j of word w = token 32 w + j
    allowed = bits.reshape(bitmask.shape[0], bitmask.shape[1] * 32)[:, :vocab].bool().to(logits.device)
    out = logits.clone()
    rows = rows.to(logits.device)
    out[rows] = out[rows].masked_fill(~allowed, float("-inf"))
    return out


class Grammar:
    """One request's position in its grammar."""

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def accept(self, token: int) -> bool:
        """Advances past ``token``; False (state unchanged) if the grammar does not allow it."""
        return bool(self._m.accept_token(token))

    @property
    def terminated(self) -> bool:
        """The grammar is complete and took its stop token: nothing may follow."""
        return bool(self._m.is_terminated())

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """bitmask[row] = the tokens allowed next."""
        self._m.fill_next_token_bitmask(bitmask, row)

    def fill_tree(self, bitmask: torch.Tensor, first_row: int, tokens: Sequence[int], parents: Sequence[int]) -> None:
        """A draft tree's rows: ``tokens``/``parents`` as the step input (node 0 = the last token,
        already accepted; parents precede children). bitmask[first_row + i] = the tokens allowed
        after the path to node i. A node whose draft token the grammar refuses can never be
        accepted (its parent's row cannot sample it): its subtree's rows allow everything. So do
        the rows at and under a stop token the grammar takes (its path ends the request: nothing
        after it is sampled, and the finished matcher has no mask to give; drafts copied from a
        chat prompt carry "<|im_end|>" and what its template puts after it)."""
        children: list[list[int]] = [[] for _ in tokens]
        for i in range(1, len(tokens)):
            children[parents[i]].append(i)

        def visit(i: int) -> None:  # the matcher stands after node i's path
            if self.terminated:
                return
            self.fill(bitmask, first_row + i)
            for c in children[i]:
                if self.accept(tokens[c]):
                    visit(c)
                    self._m.rollback(1)

        visit(0)


class Grammars:
    """Compiles specs for one tokenizer and vocabulary (xgrammar, imported on first use; its
    compiler keeps recent grammars, up to _CACHE_BYTES)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler: Any = None

    def _compile(self, spec: StructuredSpec) -> Any:
        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_limit_bytes=_CACHE_BYTES)
        c = self._compiler
        if spec.kind == "json":
            return c.compile_builtin_json_grammar()
        if spec.kind == "json_schema":
            return c.compile_json_schema(spec.spec)
        if spec.kind == "regex":
            return c.compile_regex(spec.spec)
        if spec.kind == "choice":
            return c.compile_grammar("root ::= " + " | ".join(json.dumps(s) for s in json.loads(spec.spec)))
        return c.compile_grammar(spec.spec)

    def grammar(self, spec: StructuredSpec) -> Grammar:
        """A fresh matcher at the grammar's start; InvalidRequestError if the spec does not compile."""
        import xgrammar as xgr

        try:
            compiled = self._compile(spec)
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError on bad specs
            raise InvalidRequestError("structured", f"the {spec.kind} does not compile: {e}") from None
        return Grammar(xgr.GrammarMatcher(compiled))

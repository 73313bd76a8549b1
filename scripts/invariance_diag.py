"""Where a lookahead tree's row stops matching plain decoding (a diagnostic, not a test).

    python scripts/invariance_diag.py --model DIR [--device cuda] [--dtype bfloat16] [--repeats 5]

engine.invariance's probe says *whether* a tree's node gets plain decoding's bits; this says
*where* it does not. It runs the probe's steps (contexts prefilled; a decode, a 7-node tree and a
long decode in one step; then the tree's root and its child decoded alone) with every op of the
forward traced, and prints the first op whose output row differs between the child in the tree
and the child alone, with the KV slots each left behind. It also runs the probe several times
(is the answer stable?) and the whole tree step twice (is a step deterministic?).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import torch

import engine.model as model_module
from engine.batch import SeqInput, plan_batch
from engine.engine_config import EngineConfig
from engine.invariance import LONG_CONTEXT, PROBE_CONTEXTS, PROBE_TREE, _tokens, forward_row_invariant
from engine.llm_engine import LLMEngine

logger = logging.getLogger("invariance_diag")
TRACED = ("norm_linear", "linear_residual", "rms_norm", "linear", "silu_and_mul")


class Tracer:
    """Wraps the forward's ops (engine.model's names and the backend's methods) to keep one row of
    each op's output, in call order."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.row: int | None = None
        self.trace: list[tuple[str, torch.Tensor]] = []
        self._saved: dict[str, Any] = {}

    def _wrap(self, name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def traced(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = fn(*args, **kwargs)
            if self.row is not None:
                self.trace.append((name, out[self.row].detach().float().clone()))
            return out
        return traced

    def __enter__(self) -> Tracer:
        for name in TRACED:
            self._saved[name] = getattr(model_module, name)
            setattr(model_module, name, self._wrap(name, self._saved[name]))
        backend = self.model.backend
        for name in ("rope_write_kv", "attend"):
            self._saved["backend." + name] = getattr(backend, name)
            setattr(backend, name, self._wrap(name, getattr(backend, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            if name.startswith("backend."):
                setattr(self.model.backend, name.removeprefix("backend."), fn)
            else:
                setattr(model_module, name, fn)

    def run(self, eng: LLMEngine, seqs: list[SeqInput], row: int | None) -> tuple[torch.Tensor, list]:
        self.row, self.trace = row, []
        logits = eng.model.run(plan_batch(seqs, eng.config.block_size, eng.config.device), eng.kv)
        self.row = None
        return logits, self.trace


def slots(eng: LLMEngine, table: list[int], upto: int) -> torch.Tensor:
    """K/V of one sequence's first ``upto`` tokens, every layer: [layers, 2, upto, kvh, d] fp32."""
    bs = eng.config.block_size
    blocks = eng.kv.data[torch.tensor(table, device=eng.kv.data.device)]  # [n, layers, 2, bs, kvh, d]
    per_token = blocks.permute(1, 2, 0, 3, 4, 5).reshape(blocks.shape[1], 2, len(table) * bs, *blocks.shape[4:])
    return per_token[:, :, :upto].float().clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    eng = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, num_kv_blocks=512,
                                 lookahead=False))
    bs, vocab = eng.config.block_size, eng.model.config.vocab_size
    probes = [forward_row_invariant(eng.model, eng.kv, eng.allocator, bs, args.device) for _ in range(args.repeats)]
    logger.info("probe x%d: %s", args.repeats, probes)

    contexts = list(PROBE_CONTEXTS) + ([LONG_CONTEXT] if args.device != "cpu" else [])
    tables = [eng.allocator.allocate(-(-(c + len(PROBE_TREE)) // bs)) for c in contexts]
    with torch.inference_mode(), Tracer(eng.model) as tr:
        for i, (ctx, table) in enumerate(zip(contexts, tables)):
            tr.run(eng, [SeqInput(_tokens(ctx, i, vocab), 0, table, logits="none")], None)
        (ctx_a, ctx_b), (table_a, table_b) = contexts[:2], tables[:2]
        decode_a = SeqInput(_tokens(1, 10, vocab), ctx_a, table_a)
        tree_ids = _tokens(len(PROBE_TREE), 11, vocab)
        tree_b = SeqInput(tree_ids, ctx_b, table_b, parents=PROBE_TREE, logits="all")
        batch = [decode_a, tree_b] + ([SeqInput(_tokens(1, 12, vocab), contexts[2], tables[2])] if len(contexts) > 2 else [])
        child_row = 2  # a's decode, the tree's root, its child
        together, trace_tree = tr.run(eng, batch, child_row)
        again, _ = tr.run(eng, batch, None)
        logger.info("the tree step run twice: %s", "equal" if torch.equal(together, again) else
                    f"DIFFERENT (max |d| {(together - again).abs().max().item():.3g})")
        kv_tree = slots(eng, table_b, ctx_b + 2)
        for attempt in (1, 2):
            root, _ = tr.run(eng, [SeqInput(tree_ids[:1], ctx_b, table_b)], None)
            child, trace_alone = tr.run(eng, [SeqInput(tree_ids[1:2], ctx_b + 1, table_b)], 0)
            logger.info("alone vs in the tree: root %s, child %s (attempt %d)", torch.equal(together[1], root[0]),
                        torch.equal(together[2], child[0]), attempt)
        kv_alone = slots(eng, table_b, ctx_b + 2)
        for layer in range(kv_tree.shape[0]):
            for kv in (0, 1):
                d = (kv_tree[layer, kv] != kv_alone[layer, kv]).flatten(1).any(1).nonzero().flatten().tolist()
                if d:
                    logger.info("layer %d %s: slots %s differ (ctx %d: root at %d, child at %d)", layer, "KV"[kv],
                                d[:8], ctx_b, ctx_b, ctx_b + 1)
                    break
            else:
                continue
            break
        else:
            logger.info("the root's and child's K/V: equal in every layer")
        first = None
        for i, ((name, a), (name_b, b)) in enumerate(zip(trace_tree, trace_alone)):
            assert name == name_b, (name, name_b)
            if not torch.equal(a, b):
                first = i
                break
        if first is None:
            logger.info("every traced op's child row equal (%d ops)", len(trace_tree))
        else:
            per_layer = len(trace_tree) // eng.model.config.num_layers
            for j in range(max(0, first - 2), min(len(trace_tree), first + 3)):
                (name, a), (_, b) = trace_tree[j], trace_alone[j]
                logger.info("op %d (%s, layer ~%d): %s, max |d| %.3g, %d of %d elements differ", j, name,
                            j // max(1, per_layer), "equal" if torch.equal(a, b) else "DIFFER",
                            (a - b).abs().max().item(), int((a != b).sum()), a.numel())
    for table in tables:
        eng.allocator.free(table)


if __name__ == "__main__":
    main()

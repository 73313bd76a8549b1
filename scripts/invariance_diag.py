"""Where a lookahead tree's row stops matching plain decoding (a diagnostic, not a test).

    python scripts/invariance_diag.py --model DIR [--device cuda] [--dtype bfloat16] [--repeats 5]

engine.invariance's probe says *whether* a tree's node gets plain decoding's bits; this says
*where* it does not. It runs the probe itself (its ``runner`` wrapped) with every op of the forward
traced, and prints the first op whose output row differs between the tree's depth-1 node in the
tree step and the same token decoded alone, with the K/V slots each left behind. It also runs the
probe several times (is the answer stable?) and the tree step twice (is a step deterministic?).
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
from engine.invariance import forward_row_invariant
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
    bs = eng.config.block_size
    probes = [forward_row_invariant(eng.model, eng.kv, eng.allocator, bs, args.device) for _ in range(args.repeats)]
    logger.info("probe x%d: %s", args.repeats, probes)

    # the probe once more, its steps traced: the depth-1 node's row in the tree step (row 2: a's
    # decode, the root, the child) and alone (row 0), the K/V each leaves behind the root
    traces: dict[str, list[tuple[str, torch.Tensor]]] = {}
    kv_after: dict[str, torch.Tensor] = {}
    logits: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), Tracer(eng.model) as tr:
        def runner(seqs: list[SeqInput], step: str) -> torch.Tensor:
            row = {"together": 2, "child": 0}.get(step)
            out, trace = tr.run(eng, seqs, row)
            if row is None:
                return out
            traces[step], logits[step] = trace, out[row]
            tree = seqs[1] if step == "together" else seqs[0]
            cached = tree.num_cached - (step == "child")  # the root's slot
            kv_after[step] = slots(eng, list(tree.block_table), cached + 2)
            if step == "together":
                again, _ = tr.run(eng, seqs, None)
                logger.info("the tree step run twice: %s", "equal" if torch.equal(out, again) else
                            f"DIFFERENT (max |d| {(out - again).abs().max().item():.3g})")
            return out

        logger.info("traced probe: %s", forward_row_invariant(eng.model, eng.kv, eng.allocator, bs, args.device,
                                                              runner=runner))
    logger.info("the child alone vs in the tree: %s", torch.equal(logits["together"], logits["child"]))
    kv_tree, kv_alone = kv_after["together"], kv_after["child"]
    for layer in range(kv_tree.shape[0]):
        for kv in (0, 1):
            d = (kv_tree[layer, kv] != kv_alone[layer, kv]).flatten(1).any(1).nonzero().flatten().tolist()
            if d:
                logger.info("layer %d %s: slots %s of the tree's differ (the root is the second last, the child "
                            "the last)", layer, "KV"[kv], d[:8])
                break
        else:
            continue
        break
    else:
        logger.info("the root's and child's K/V: equal in every layer")
    trace_tree, trace_alone = traces["together"], traces["child"]
    first = next((i for i, ((name, a), (name_b, b)) in enumerate(zip(trace_tree, trace_alone))
                  if not torch.equal(a, b)), None)
    if first is None:
        logger.info("every traced op's child row equal (%d ops)", len(trace_tree))
        return
    per_layer = len(trace_tree) // eng.model.config.num_layers
    for j in range(max(0, first - 2), min(len(trace_tree), first + 3)):
        (name, a), (_, b) = trace_tree[j], trace_alone[j]
        logger.info("op %d (%s, layer ~%d): %s, max |d| %.3g, %d of %d elements differ", j, name,
                    j // max(1, per_layer), "equal" if torch.equal(a, b) else "DIFFER",
                    (a - b).abs().max().item(), int((a != b).sum()), a.numel())

if __name__ == "__main__":
    main()

"""fp32 products on a CPU: ``F.linear`` or ``W @ X``, by row count, measured at start on the model's weights.

torch's ``F.linear`` (MKL) streams fp32 weights slowly at a few rows on some machines. On this
project's AMD EPYC with 2 threads, SmolLM2's whole fp32 forward took 48 ms at 1 token and 85 ms
at 2 with it, and 23 and 35 ms with the products as ``W @ X`` (``product``: one row taken as two
contiguous columns), near the time to read its 540 MB of weights once. With 1 thread ``W @ X`` won
at 1 to 4 rows and lost at 8 to 32, and on another machine it may lose everywhere. So the engine times both (``tune``) on the
model's own weights, every layer's, so that they stream from memory as in a step, for row counts
1 to 128 in power-of-two buckets; ``by_wx`` then tells ``engine.layers.linear`` which to take.
Past 128 rows (prefill chunks) products take ``F.linear``.

fp32 is not row-invariant either way (engine.llm_engine takes fp32 lookahead as it is), so the
choice moves only speed. It is a machine's property, by (torch threads, weight shape), like the CPU
kernels' builds: timed once (~5 s for SmolLM2 on 2 cores; ``make`` does it at set-up for the
bundled model, ``python -m engine.fp32_products``), kept under ``$GROVE_CACHE/fp32-products/``
keyed by the CPU, torch, the threads and the shape, and held for the process once read, so two
engines of one process with the same model take the same paths.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from engine.paths import cache_dir, write_atomic
from engine.step_cost_cache import device_name

if TYPE_CHECKING:
    from engine.model import ModelWeights  # (engine.model imports engine.layers, which imports this)

logger = logging.getLogger(__name__)
VERSION = 1  # bump when what is timed changes

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # a product of t rows takes the choice of the first bucket >= t
# (threads, out, in) -> whether W @ X beats F.linear, per bucket
_BY_WX: dict[tuple[int, int, int], tuple[bool, ...]] = {}


def by_wx(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.t()`` (x: [t, in] fp32 on a CPU) runs faster as ``product`` here."""
    t = x.shape[0]
    if not 1 <= t <= BUCKETS[-1] or x.dtype != torch.float32 or x.device.type != "cpu":
        return False
    table = _BY_WX.get((torch.get_num_threads(), weight.shape[0], weight.shape[1]))
    return table is not None and table[(t - 1).bit_length()]


def product(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight: [out, in], x: [t, in] -> [t, out] contiguous (as F.linear gives it: the q/k/v split,
    the logits' views and the kernels take rows) from ``W @ X.t()``, t <= 128. One row is taken as
    two contiguous columns: MKL runs a one-column product, or a stride-0 view of two, ~4x slower."""
    if x.shape[0] == 1:
        return torch.mm(weight, x.expand(2, -1).contiguous().t())[:, :1].t().contiguous()
    return torch.mm(weight, x.t()).t().contiguous()


def tune(kinds: Sequence[Sequence[object]]) -> dict[tuple[int, int], tuple[bool, ...]]:
    """``kinds``: the model's weights of one shape each (a projection's over every layer, the LM
    head). For each fp32 CPU kind, the choice kept for this machine and thread count, else both
    layouts timed over its weights (best of 3) and the choice kept; returns the choices by shape
    (part of the step calibration's key: they move a step's cost)."""
    threads = torch.get_num_threads()
    chosen: dict[tuple[int, int], tuple[bool, ...]] = {}
    for weights in kinds:
        ws = [w for w in weights if isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.device.type == "cpu"]
        if not ws:
            continue
        shape = (ws[0].shape[0], ws[0].shape[1])
        key = (threads, *shape)
        if key not in _BY_WX:
            path = _path(threads, shape)
            kept = _load(path)
            _BY_WX[key] = kept if kept is not None else _time(ws)
            logger.info("fp32 products [%d, %d] on %d threads as W @ X at %s rows (%s)", *shape, threads,
                        [t for t, wx in zip(BUCKETS, _BY_WX[key]) if wx] or "no", "kept" if kept else "timed")
            if kept is None:
                _store(path, _BY_WX[key])
        chosen[shape] = _BY_WX[key]
    return chosen


def _time(ws: list[torch.Tensor]) -> tuple[bool, ...]:
    x = torch.randn(BUCKETS[-1], ws[0].shape[1], generator=torch.Generator().manual_seed(0))

    def over(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], t: int) -> float:
        return _best(lambda: [fn(w, x[:t]) for w in ws])

    return tuple(over(product, t) < over(lambda w, a: F.linear(a, w), t) for t in BUCKETS)


def _path(threads: int, shape: tuple[int, int]) -> Path:
    blob = json.dumps({"version": VERSION, "torch": torch.__version__, "cpu": device_name("cpu"), "threads": threads,
                       "shape": shape}, sort_keys=True)
    return cache_dir() / "fp32-products" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def _load(path: Path) -> tuple[bool, ...] | None:
    try:
        by_wx = json.loads(path.read_text())["by_wx"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tuple(bool(b) for b in by_wx) if isinstance(by_wx, list) and len(by_wx) == len(BUCKETS) else None


def _store(path: Path, by_wx: tuple[bool, ...]) -> None:
    try:
        write_atomic(path, json.dumps({"buckets": BUCKETS, "by_wx": by_wx}) + "\n")  # workers start side by side
    except OSError as e:  # a read-only cache costs the next start its timing, nothing else
        logger.warning("could not keep the fp32 products' timing in %s: %s", path, e)


def main() -> None:
    """Times the bundled model's fp32 products at torch's default thread count (``make`` set-up)."""
    from engine.attention import get_backend
    from engine.config import ModelConfig
    from engine.model_loader import load_model
    from engine.paths import default_model_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_dir = default_model_dir()
    mc = ModelConfig.from_dir(model_dir)
    model = load_model(model_dir, get_backend("torch", "cpu", mc.head_dim, mc.sliding_window), dtype=torch.float32,
                       device="cpu")
    tune(model_kinds(model.weights))


def model_kinds(weights: ModelWeights) -> list[list[object]]:
    """A model's weights by shape, as ``tune`` takes them: each projection over every layer, the LM head."""
    return [[getattr(layer, name) for layer in weights.layers] for name in ("qkv", "o", "gate_up", "down")] \
        + [[weights.lm_head]]


def _best(fn: Callable[[], object], reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


if __name__ == "__main__":
    main()

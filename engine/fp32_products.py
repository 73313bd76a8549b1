"""fp32 products on a CPU: ``F.linear``, ``W @ X`` or Grove's fp32 kernel, by row count, measured at
start on the model's weights.

torch's ``F.linear`` (MKL) streams fp32 weights slowly at a few rows on some machines. On this
project's AMD EPYC (Zen 4) with 2 threads, SmolLM2's whole fp32 forward took 48 ms at 1 token and
85 ms at 2 with it, and 23 and 35 ms with the products as ``W @ X`` (``product``: one row taken as
two contiguous columns), near the time to read its 540 MB of weights once. With 1 thread ``W @ X``
won at 1 to 4 rows and lost at 8 to 32. On an AVX2-only AMD EPYC (Zen 1) both streamed at ~10 GB/s
(the products with the lm_head: 55 ms at 1 row), where kernels.cpu_linear_fp32 (AVX2 + FMA, the
weights as they lie) streams at ~16. So the engine times all three (``tune``) on the model's own
weights, every layer's, so that they stream from memory as in a step, for row counts 1 to 128 in
power-of-two buckets; ``choice`` then tells ``engine.layers.linear`` which to take. Past 128 rows
(prefill chunks) products take ``F.linear``.

fp32 is not row-invariant either way (engine.llm_engine takes fp32 lookahead as it is), so the
choice moves only speed. It is a machine's property, by (torch threads, weight shape), like the CPU
kernels' builds: timed once (~5-10 s for SmolLM2 on 2 cores; ``make`` does it at set-up for the
bundled model, ``python -m engine.fp32_products``), kept under ``$GROVE_CACHE/fp32-products/``
keyed by the CPU, torch, the threads, the shape and the fp32 kernel's build (a change to the kernel
times them again), and held for the process once read, so two engines of one process with the same
model take the same paths.
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
from kernels import cpu_build, cpu_linear_fp32

if TYPE_CHECKING:
    from engine.model import ModelWeights  # (engine.model imports engine.layers, which imports this)

logger = logging.getLogger(__name__)
VERSION = 2  # bump when what is timed changes (2: the fp32 kernel joined)

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # a product of t rows takes the choice of the first bucket >= t
LINEAR, WX, KERNEL = 0, 1, 2  # F.linear, W @ X (``product``), kernels.cpu_linear_fp32
NAMES = ("F.linear", "W @ X", "kernel")
# (threads, out, in) -> the layout per bucket
_CHOICE: dict[tuple[int, int, int], tuple[int, ...]] = {}


def choice(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Which layout ``x @ weight.t()`` (x: [t, in] fp32 on a CPU) runs fastest in here: LINEAR
    (also for anything never timed), WX or KERNEL."""
    t = x.shape[0]
    if not 1 <= t <= BUCKETS[-1] or x.dtype != torch.float32 or x.device.type != "cpu":
        return LINEAR
    table = _CHOICE.get((torch.get_num_threads(), weight.shape[0], weight.shape[1]))
    return LINEAR if table is None else table[(t - 1).bit_length()]


def product(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight: [out, in], x: [t, in] -> [t, out] contiguous (as F.linear gives it: the q/k/v split,
    the logits' views and the kernels take rows) from ``W @ X.t()``, t <= 128. One row is taken as
    two contiguous columns: MKL runs a one-column product, or a stride-0 view of two, ~4x slower."""
    if x.shape[0] == 1:
        return torch.mm(weight, x.expand(2, -1).contiguous().t())[:, :1].t().contiguous()
    return torch.mm(weight, x.t()).t().contiguous()


def tune(kinds: Sequence[Sequence[object]]) -> dict[tuple[int, int], tuple[int, ...]]:
    """``kinds``: the model's weights of one shape each (a projection's over every layer, the LM
    head). For each fp32 CPU kind, the choice kept for this machine and thread count, else the
    layouts timed over its weights (best of 3) and the choice kept; returns the choices by shape
    (part of the step calibration's key: they move a step's cost)."""
    threads = torch.get_num_threads()
    chosen: dict[tuple[int, int], tuple[int, ...]] = {}
    for weights in kinds:
        ws = [w for w in weights if isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.device.type == "cpu"]
        if not ws:
            continue
        shape = (ws[0].shape[0], ws[0].shape[1])
        key = (threads, *shape)
        if key not in _CHOICE:
            path = _path(threads, shape)
            kept = _load(path)
            _CHOICE[key] = kept if kept is not None else _time(ws)
            logger.info("fp32 products [%d, %d] on %d threads by bucket %s: %s (%s)", *shape, threads, BUCKETS,
                        [NAMES[c] for c in _CHOICE[key]], "kept" if kept else "timed")
            if kept is None:
                _store(path, _CHOICE[key])
        chosen[shape] = _CHOICE[key]
    return chosen


def _time(ws: list[torch.Tensor]) -> tuple[int, ...]:
    x = torch.randn(BUCKETS[-1], ws[0].shape[1], generator=torch.Generator().manual_seed(0))
    layouts: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = [lambda w, a: F.linear(a, w), product]
    if all(cpu_linear_fp32.takes(w) for w in ws):
        layouts.append(lambda w, a: cpu_linear_fp32.linear(a, w))

    def over(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], t: int) -> float:
        return _best(lambda: [fn(w, x[:t]) for w in ws])

    return tuple(min(range(len(layouts)), key=lambda i: over(layouts[i], t)) for t in BUCKETS)


def _path(threads: int, shape: tuple[int, int]) -> Path:
    # the kernel's build, where it has one (its source may be absent, as in an install without the C++ files)
    kernel = cpu_build.library_path(cpu_linear_fp32.SOURCE).stem if cpu_linear_fp32.available() else None
    blob = json.dumps({"version": VERSION, "torch": torch.__version__, "cpu": device_name("cpu"), "threads": threads,
                       "shape": shape, "kernel": kernel}, sort_keys=True)
    return cache_dir() / "fp32-products" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def _load(path: Path) -> tuple[int, ...] | None:
    try:
        kept = json.loads(path.read_text())["choice"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(kept, list) and len(kept) == len(BUCKETS) and all(c in (LINEAR, WX, KERNEL) for c in kept)):
        return None
    if KERNEL in kept and not cpu_linear_fp32.available():  # the kernel no longer builds here: time again
        return None
    return tuple(kept)


def _store(path: Path, choices: tuple[int, ...]) -> None:
    try:
        write_atomic(path, json.dumps({"buckets": BUCKETS, "choice": choices,
                                       "names": [NAMES[c] for c in choices]}) + "\n")  # workers start side by side
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

"""Step-cost calibrations kept on disk, so an engine that starts as an earlier one did skips the timing.

Calibration (``LLMEngine._calibrate``) times ~40 forwards at start: 5-15 s on 2 CPU cores, paid by
every decode worker at every start. The timings depend on the machine, the model and how it runs
(dtype, device, threads, attention backend, block size, which terms the pool could price), so the
key holds all of those; anything else that changes the costs is refined online from every step
(engine.lookahead.budget.StepCostModel). Like Triton's autotuning cache: measured once per setup,
kept under ``$GROVE_CACHE/step-cost/`` (or ``$GROVE_STEP_COST_CACHE``: the tests keep theirs apart,
as their timings are taken beside other tests); ``--calibration-cache off`` measures at every start.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from engine.lookahead.budget import StepCostModel
from engine.paths import cache_dir, write_atomic
from kernels import cpu_build

logger = logging.getLogger(__name__)
VERSION = 3  # bump when what calibration measures changes (2: rope and K/V writes in one kernel call;
# 3: a step's key reads counted causally, engine.lookahead.budget.key_reads)
KERNEL_SOURCES = Path(__file__).resolve().parents[1] / "kernels"


def kernel_digest() -> str:
    """The CPU kernels' builds, as cpu_build keys them (each source, its headers, the compiler flags
    and the CPU): a step's cost changes with them, so a calibration kept from before a kernel
    changed is not taken."""
    return "+".join(cpu_build.library_path(src).stem for src in sorted(KERNEL_SOURCES.glob("*.cpp")))


def triton_digest() -> str:
    """The Triton kernels' sources (what a GPU's steps run on, products included for 16-bit
    models): part of a GPU calibration's key, as kernel_digest is of every one's."""
    digest = hashlib.sha256()
    for src in sorted(KERNEL_SOURCES.glob("*.py")):
        if not src.name.startswith("cpu_"):
            digest.update(src.read_bytes())
    return digest.hexdigest()[:16]


def device_name(device: str) -> str:
    """What runs the forwards: the GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def cache_key(setup: dict[str, Any]) -> str:
    """setup: JSON-able facts the timings depend on -> a file name."""
    blob = json.dumps({"version": VERSION, "torch": torch.__version__, "kernels": kernel_digest(), **setup},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    root = os.environ.get("GROVE_STEP_COST_CACHE") or cache_dir() / "step-cost"
    return Path(root) / f"{key}.json"


def load(key: str, cost: StepCostModel) -> bool:
    """Fills ``cost`` from the calibration kept under ``key``; False when there is none (or it is unreadable)."""
    try:
        doc = json.loads(_path(key).read_text())
        points = {int(b): (float(t), float(s)) for b, (t, s) in doc["points"].items()}
        terms = {name: float(doc[name]) for name in ("per_key_read", "per_context_key", "group_overhead")}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    cost.points.update(points)
    for name, value in terms.items():
        setattr(cost, name, value)
    cost.invalidate()
    return True


def disturbed(cost: StepCostModel, slack: float = 1.25) -> bool:
    """Whether a narrower step timed more than ``slack`` x a wider one: something else ran beside
    the calibration (a bf16 one beside a parallel test run: 16 tokens 143 ms, 32 tokens 95). One
    start may run on it (the curve is capped and refined online); it is not kept for later ones."""
    seconds = [s for _, (_, s) in sorted(cost.points.items())]
    return any(narrow > slack * min(seconds[i + 1:]) for i, narrow in enumerate(seconds[:-1]))


def store(key: str, cost: StepCostModel, setup: dict[str, Any]) -> None:
    """Keeps ``cost``'s calibrated state under ``key`` (atomically: engines may start side by side),
    unless it looks ``disturbed``."""
    path = _path(key)
    if disturbed(cost):
        logger.warning("step-cost calibration not kept: a narrower step timed slower than a wider one "
                       "(something else was running); the next start times again")
        return
    doc = {"setup": setup, "points": {str(b): list(p) for b, p in cost.points.items()},
           "per_key_read": cost.per_key_read, "per_context_key": cost.per_context_key,
           "group_overhead": cost.group_overhead}
    try:
        write_atomic(path, json.dumps(doc, indent=1) + "\n")
    except OSError as e:  # a read-only cache costs the next start its calibration, nothing else
        logger.warning("could not keep the step-cost calibration in %s: %s", path, e)

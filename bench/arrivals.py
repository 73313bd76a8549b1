"""Request arrival processes for open-loop load: Poisson, or Gamma with a burstiness parameter.

Gaps between arrivals are Gamma(shape=burstiness, scale=1/(rate*burstiness)): the mean gap is
always 1/rate; burstiness 1 gives exponential gaps (a Poisson process), below 1 burstier traffic
(squared coefficient of variation 1/burstiness), above 1 more regular traffic.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np


def gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless inter-arrival gaps in seconds; all zero for an infinite rate (everything at once)."""
    if not rate > 0:
        raise ValueError(f"request rate must be positive, got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    if math.isinf(rate):
        while True:
            yield 0.0
    rng = np.random.default_rng(seed)
    scale = 1.0 / (rate * burstiness)
    while True:
        for gap in rng.gamma(burstiness, scale, size=1024):
            yield float(gap)


def arrival_offsets(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless send times (s from the start of the run). The first request goes at 0, so a run
    never starts idle; each later one a gap after the previous."""
    t = 0.0
    yield t
    for gap in gaps(rate, burstiness, seed):
        t += gap
        yield t


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """The first ``n`` send times of ``arrival_offsets``."""
    return list(itertools.islice(arrival_offsets(rate, burstiness, seed), n))

"""Arrival processes: mean rate, burstiness and the Poisson case, on seeded samples."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.arrivals import arrival_times, gaps


def _gaps(rate: float, burstiness: float, n: int = 40_000, seed: int = 1) -> np.ndarray:
    return np.diff(arrival_times(n + 1, rate, burstiness, seed))


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_gaps_have_the_rate_and_burstiness(burstiness: float) -> None:
    g = _gaps(5.0, burstiness)
    assert g.mean() == pytest.approx(1 / 5.0, rel=0.03)
    cv2 = g.var() / g.mean() ** 2  # squared coefficient of variation of a Gamma(k) is 1/k
    assert cv2 == pytest.approx(1 / burstiness, rel=0.08)


def test_burstiness_one_is_poisson() -> None:
    g = _gaps(3.0, 1.0, n=5_000, seed=7)
    assert sps.kstest(g, "expon", args=(0, 1 / 3.0)).pvalue > 0.01
    # and a clearly bursty process is rejected by the same test
    assert sps.kstest(_gaps(3.0, 0.2, n=5_000, seed=7), "expon", args=(0, 1 / 3.0)).pvalue < 1e-6


def test_schedule_shape() -> None:
    times = arrival_times(5, 2.0, 1.0, seed=3)
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))
    assert times == arrival_times(5, 2.0, 1.0, seed=3)  # reproducible
    assert arrival_times(4, math.inf) == [0.0] * 4
    with pytest.raises(ValueError):
        next(gaps(0.0))
    with pytest.raises(ValueError):
        next(gaps(1.0, burstiness=0.0))

"""Calibration from traces: the curve, the contention between pools and the speed noise are
recovered from made-up calls with known values."""

from __future__ import annotations

import math
import random

import pytest

from glimp_ray.sim.calibrate import CallSample, _non_decreasing, call_samples, fit_noise, fit_pool
from glimp_ray.traces import TracedCall, TracedRequest


def curve(b: float) -> float:
    return 0.02 + 0.005 * (b - 1)


def samples(n: int, busy_s: float, rng: random.Random, noise: float = 0.0) -> list[CallSample]:
    out = []
    for i in range(n):
        b = rng.choice([1.0, 1.2, 2.0, 2.9, 4.0, 4.2, 8.0])
        other = rng.random()
        seconds = (curve(b) + busy_s * other) * math.exp(rng.gauss(0, noise) - noise**2 / 2)
        out.append(CallSample("large", seconds, b, other, float(i), rng.randint(5, 15)))
    return out


def test_fit_pool_recovers_the_curve_and_the_contention() -> None:
    rng = random.Random(0)
    fitted, busy = fit_pool(samples(3000, 0.01, rng, noise=0.1), "large", contention=True)
    assert busy == pytest.approx(0.01, rel=0.1)
    for b in (1, 2, 4, 8):
        assert fitted[b] == pytest.approx(curve(b), rel=0.05)
    # Without contention the busy share's mean cost is folded into the curve.
    folded, none = fit_pool(samples(3000, 0.01, random.Random(0)), "large", contention=False)
    assert none == 0.0
    assert folded[1] == pytest.approx(curve(1) + 0.005, rel=0.05)


def test_the_curve_is_non_decreasing() -> None:
    blocks = _non_decreasing([[1.0, 0.02, 100], [2.0, 0.03, 100], [3.0, 0.025, 100], [4.0, 0.04, 100]])
    assert [round(y, 4) for _, y, _ in blocks] == [0.02, 0.0275, 0.04]
    assert blocks[1][0] == pytest.approx(2.5)


def test_fit_noise_separates_a_shared_drift_from_each_calls_own() -> None:
    # An Ornstein–Uhlenbeck drift (sd 0.2, 3 s) sampled by calls every 0.1 s, each with its own
    # noise (sd 0.3); predicted seconds per token are exact but for the noise.
    rng = random.Random(1)
    keep = math.exp(-0.1 / 3.0)
    x = 0.0
    calls, predicted = [], []
    for i in range(20000):
        x = x * keep + 0.2 * math.sqrt(1 - keep**2) * rng.gauss(0, 1)
        calls.append(CallSample("small", 0.01 * math.exp(x + rng.gauss(0, 0.3)), 1.0, 0.0, 0.1 * i, 10))
        predicted.append(0.01)
    noise = fit_noise(calls, predicted)
    assert noise.sd == pytest.approx(0.2, rel=0.25)
    assert noise.call_sd == pytest.approx(0.3, rel=0.1)
    assert 1.5 <= noise.correlation_s <= 6.0


def test_call_samples_measure_the_other_pools_busy_share() -> None:
    # The small pool is busy over [0, 1] and [3, 4]; a large call over [0.5, 3.5] sees it busy
    # for 1 s of 3.
    small = TracedRequest(
        "s", (TracedCall("small", 0.0, 10, 1.0, end_s=1.0),), TracedCall("small", None, 10, 1.0, end_s=4.0), 0.0
    )
    large = TracedRequest("l", (), TracedCall("large", None, 30, 3.0, end_s=3.5), 0.0)
    found = {s.pool + str(s.tokens): s for s in call_samples([small, large])}
    assert found["large30"].other_busy == pytest.approx(1 / 3)
    assert found["large30"].seconds_per_token == pytest.approx(0.1)
    assert found["small10"].other_busy in (pytest.approx(0.5),)

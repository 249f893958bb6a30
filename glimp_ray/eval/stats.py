"""Statistics for comparing policies on the same problems and seeds: pure functions.

- :func:`mean_sd`: mean and sample standard deviation over seeds;
- :func:`mcnemar_exact`: McNemar's exact test on the discordant pairs of two policies' right/wrong;
- :func:`paired_bootstrap`: the mean of paired differences with a bootstrap confidence interval
  and p-value, resampling whole problems (the seeds of one problem are not independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class McNemar:
    """``only_a``: pairs A got right and B wrong; ``only_b``: the reverse; ``p``: two-sided."""

    only_a: int
    only_b: int
    p: float


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under the null each discordant pair is A's or B's with
    probability 1/2, so the smaller count is Binomial(n, 1/2); p = 2 P(X <= min), capped at 1."""
    if only_a < 0 or only_b < 0:
        raise ValueError("counts must be non-negative")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired outcomes (the same problem and seed under A and B)."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    return McNemar(only_a, only_b, mcnemar_exact(only_a, only_b))


@dataclass(frozen=True)
class Bootstrap:
    """The mean paired difference, its percentile interval (``level``) and a two-sided p-value."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    resamples: int
    level: float = 0.95


def paired_bootstrap(
    differences: Sequence[float], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> Bootstrap:
    """Bootstrap over units (problems) of their paired differences A − B.

    The interval is the percentile interval of resampled means. The p-value tests a zero mean:
    the differences are shifted to mean zero (the null) and resampled the same way; p is the
    share of null means at least as far from zero as the observed one, ``(1 + count) / (1 +
    resamples)``. Deterministic for a given ``seed``."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("no differences to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, d.size, size=(resamples, d.size))
    observed = float(d.mean())
    means = d[index].mean(axis=1)
    null = (d - observed)[index].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    # A tolerance relative to the size of the effect: all-equal differences are not "more extreme".
    extreme = np.abs(null) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    p = (1 + int(extreme.sum())) / (1 + resamples)
    return Bootstrap(observed, float(low), float(high), min(1.0, p), int(d.size), resamples, level)

"""Summary statistics for an evaluation run: pure functions, no models."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    if not pos or not neg:
        return math.nan
    # Rank-sum (Mann-Whitney U) with average ranks for ties.
    ranked = sorted((s, p) for s, p in zip(scores, positives, strict=True))
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1
        rank_sum += average_rank * sum(1 for k in range(i, j + 1) if ranked[k][1])
        i = j + 1
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def quantile_threshold(entropies: Sequence[float], large_fraction: float) -> float:
    """The τ sending ``large_fraction`` of these steps large (entropy > τ goes large)."""
    if not entropies:
        raise ValueError("no entropies to calibrate on")
    if not 0 <= large_fraction <= 1:
        raise ValueError(f"large fraction must be in [0, 1], got {large_fraction}")
    return percentile(entropies, 100 * (1 - large_fraction))


# Signals whose high values send a step large (or have it rewritten); the others' low values do.
HIGH_MEANS_LARGE = ("entropy", "h_step", "ppl_step")


def signal_threshold(values: Sequence[float], large_fraction: float, signal: str) -> float:
    """The threshold sending ``large_fraction`` of these steps large on ``signal``: an entropy, a
    step's mean entropy or perplexity above it goes large; a top-1 probability, a margin, a step's
    lowest token probability or a verification score below it does."""
    if signal in HIGH_MEANS_LARGE:
        return quantile_threshold(values, large_fraction)
    if not values:
        raise ValueError(f"no {signal} values to calibrate on")
    if not 0 <= large_fraction <= 1:
        raise ValueError(f"large fraction must be in [0, 1], got {large_fraction}")
    return percentile(values, 100 * large_fraction)

"""Searches over replica counts for a p95 objective.

Both take the p95 as a function of the counts (``{"small": n, "large": m}``; one pool for
large-only) and a cost per replica of each pool (price per hour, or 1 to count replicas).

- :func:`cheapest` is exact when the p95 does not rise as a count grows (the analytic model):
  it finds one count that meets the objective (scaling all pools together), which bounds every
  cheaper one, then walks the staircase of the fewest replicas of the second pool for each count
  of the first within that bound.
- :func:`confirm` is a local search for an evaluator that is only roughly monotone (the
  simulator): from a starting count it scales all pools up together until the objective is
  met, then lowers each pool (the dearer first) to the fewest replicas that still meet it, by
  bisection, until no pool moves, so that one replica fewer in any pool misses it (or that pool is
  at its minimum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Counts = dict[str, int]
P95 = Callable[[Mapping[str, int]], float]


class Memo:
    """A p95 evaluator that runs each count once."""

    def __init__(self, p95: P95) -> None:
        self._p95 = p95
        self.seen: dict[tuple[tuple[str, int], ...], float] = {}

    def __call__(self, counts: Mapping[str, int]) -> float:
        key = tuple(sorted(counts.items()))
        if key not in self.seen:
            self.seen[key] = self._p95(counts)
        return self.seen[key]


def cost(counts: Mapping[str, int], weights: Mapping[str, float]) -> float:
    return sum(counts[p] * weights[p] for p in counts)


def _order(counts: Counts, weights: Mapping[str, float], p95: float) -> tuple[float, int, float]:
    """Cheaper first, then fewer replicas, then the lower p95."""
    return (round(cost(counts, weights), 9), sum(counts.values()), p95)


def cheapest(
    p95: P95,
    slo: float,
    weights: Mapping[str, float],
    low: Mapping[str, int],
    start: Mapping[str, int] | None = None,
    limit: int = 10_000,
) -> tuple[Counts | None, Memo]:
    """The cheapest counts (each ≥ ``low``) whose p95 meets ``slo``, or ``None`` if none does
    within ``limit`` replicas a pool; exact for a p95 that no count increase raises."""
    memo = p95 if isinstance(p95, Memo) else Memo(p95)
    low = {p: min(n, limit) for p, n in low.items()}
    found = _first_met(memo, slo, {p: max(low[p], (start or low).get(p, low[p])) for p in low}, limit)
    if found is None:
        return None, memo
    budget = cost(found, weights)
    pools = list(low)
    best = found
    if len(pools) == 1:
        (pool,) = pools
        for n in range(low[pool], found[pool]):
            if memo({pool: n}) <= slo:
                return {pool: n}, memo
        return found, memo
    first, second = pools
    rest = cost(low, weights)

    def most(pool: str) -> int:  # the most replicas of ``pool`` within the budget, the other at its low
        spare = budget - rest
        return low[pool] + (int(math.floor(spare / weights[pool] + 1e-9)) if weights[pool] > 0 else limit)

    top = {p: min(limit, most(p)) for p in pools}
    n2 = top[second]
    for n1 in range(low[first], top[first] + 1):
        if memo({first: n1, second: n2}) > slo:
            continue
        while n2 > low[second] and memo({first: n1, second: n2 - 1}) <= slo:
            n2 -= 1
        counts = {first: n1, second: n2}
        if _order(counts, weights, memo(counts)) < _order(best, weights, memo(best)):
            best = counts
    return best, memo


def _first_met(p95: Memo, slo: float, begin: Counts, limit: int) -> Counts | None:
    """A count that meets ``slo`` on the ray from ``begin`` (all pools scaled together), near its
    first: the scale is doubled until it is met, then bisected. ``None`` if ``limit`` does not."""

    def at(scale: float) -> Counts:
        return {p: min(limit, max(n, math.ceil(n * scale - 1e-9))) for p, n in begin.items()}

    if p95(begin) <= slo:
        return begin
    low, high = 1.0, 2.0
    while p95(at(high)) > slo:
        if all(n >= limit for n in at(high).values()):
            return None
        low, high = high, high * 2
    while at(high) != at(low) and high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (low, middle) if p95(at(middle)) <= slo else (middle, high)
    return at(high)


def _fewest(p95: Memo, slo: float, counts: Counts, pool: str, low: int) -> int:
    """The fewest replicas of ``pool`` (≥ ``low``, the others as in ``counts``, which meets
    ``slo``) that meet ``slo``, by bisection: a start far above the need costs a few runs, not
    one a replica."""
    met, missed = counts[pool], low - 1  # the search keeps: met meets, missed misses (or is below low)
    while met - missed > 1:
        middle = (met + missed) // 2
        if p95({**counts, pool: middle}) <= slo:
            met = middle
        else:
            missed = middle
    while met > low and p95({**counts, pool: met - 1}) <= slo:  # a near-monotone evaluator's dips
        met -= 1
    return met


@dataclass(frozen=True)
class Confirmed:
    """Counts the evaluator confirms: the p95 there and with one replica fewer in each pool."""

    replicas: Counts
    p95_s: float
    one_fewer_p95_s: dict[str, float | None]  # None: that pool is at its minimum
    runs: int  # evaluations it took


def confirm(
    p95: P95,
    slo: float,
    start: Mapping[str, int],
    weights: Mapping[str, float],
    low: Mapping[str, int],
    limit: int = 10_000,
    max_runs: int = 60,
) -> Confirmed | None:
    """Counts near ``start`` that meet ``slo`` where one replica fewer in any pool misses it (or
    that pool is at ``low``); ``None`` if ``limit`` replicas a pool (at most 8× ``start`` + 8) do
    not meet it."""
    memo = p95 if isinstance(p95, Memo) else Memo(p95)
    limit = min(limit, 8 * max(start.values()) + 8)  # an evaluator this far off is not near-monotone
    counts = _first_met(memo, slo, {p: max(low[p], start[p]) for p in start}, limit)
    if counts is None:
        return None
    changed = True
    while changed and len(memo.seen) < max_runs:
        changed = False
        for pool in sorted(counts, key=lambda p: -weights[p]):  # the dearer pool first
            fewest = _fewest(memo, slo, counts, pool, low[pool])
            if fewest < counts[pool]:
                counts, changed = {**counts, pool: fewest}, True
    one_fewer: dict[str, float | None] = {
        pool: memo({**counts, pool: counts[pool] - 1}) if counts[pool] > low[pool] else None for pool in counts
    }
    return Confirmed(counts, memo(counts), one_fewer, len(memo.seen))

"""A batching replica's capacity: per-token latency as a function of how many requests it runs.

A replica that batches (HFEngine's decode batch, vLLM's scheduler) writes one token for each
running request per forward, and a forward takes longer as the batch grows. With ``b`` requests
running at once:

    per-token latency   ℓ(b) = base_s + slope_s × (b − 1)     seconds per token each request sees
    throughput          T(b) = b / ℓ(b)                        tokens/s the replica writes

So a replica's tokens per *busy* second is not a constant: it grows with concurrency until the
forwards get slow. Calls arrive at random, so a call finds the ``b`` others a replica runs on
average and sees ``ℓ(1 + b)`` (:meth:`BatchingCurve.latency_seen`). A pool is sized for each
replica to run ``b*`` on average (:func:`planned_concurrency`): the largest ``b`` whose
``ℓ(1 + b)`` meets the per-token latency target and whose ``1 + b`` fits ``max_concurrency``
(``max_running`` / ``max_num_seqs``, or what the KV budget holds); by Little's law
(:func:`replicas_seen`)

    replicas = demand × ℓ(1 + b*) / b*        (demand in tokens/s)

(:meth:`BatchingCurve.target_concurrency` and :func:`replicas_for` are the older rule, every
replica running exactly ``b*``; the planner keeps them only for a target even a lone call misses.)

The curve is fitted from what replicas measure over windows of busy time (:class:`Observation`:
mean concurrency and per-token latency); the autoscaler (:mod:`glimp_ray.autoscaling`) and the
planner (:mod:`glimp_ray.planner`) share it.

Live reports bunch at one concurrency (a steady pool runs where its count puts it), so they
cannot tell a slope. :func:`refine` keeps a prior in the fit (a measured profile's curve, or
without one a conservative slope of ``PRIOR_SLOPE_RATIO`` × base) and lets reports move the slope
only as far as reports at clearly different concurrencies support it: bunched reports never turn
it to 0 ("batching is free").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    """What a replica measured over a window: mean running requests while busy, seconds per token."""

    concurrency: float
    latency_s: float  # request-seconds in the model per generated token
    weight: float = 1.0  # e.g. the tokens behind it

    def __post_init__(self) -> None:
        if not (self.concurrency >= 1 and self.latency_s > 0 and self.weight > 0):
            raise ValueError(f"an observation needs concurrency >= 1, latency > 0, weight > 0: {self}")


@dataclass(frozen=True)
class BatchingCurve:
    """``ℓ(b) = base_s + slope_s × (b − 1)``: per-token latency at ``b`` concurrent requests."""

    base_s: float
    slope_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.slope_s >= 0):
            raise ValueError(f"a batching curve needs base_s > 0 and slope_s >= 0, got {self}")

    def latency(self, concurrency: float) -> float:
        return self.base_s + self.slope_s * max(concurrency - 1.0, 0.0)

    def throughput(self, concurrency: float) -> float:
        """Tokens/s of a replica running ``concurrency`` requests."""
        return concurrency / self.latency(concurrency)

    def target_concurrency(self, latency_target_s: float, max_concurrency: float) -> float:
        """The most requests a replica runs at once with ``ℓ ≤ latency_target_s`` (at least 1)."""
        if self.latency(max_concurrency) <= latency_target_s:
            return max_concurrency
        if self.slope_s == 0 or self.base_s >= latency_target_s:
            return 1.0  # even a lone request misses the target: spread requests as thin as possible
        return min(max_concurrency, max(1.0, 1.0 + (latency_target_s - self.base_s) / self.slope_s))

    def concurrency_at(self, demand: float, replicas: int) -> float:
        """Mean requests running per replica when ``replicas`` share ``demand`` tokens/s arriving at
        random; ``inf`` when no concurrency can deliver it (the queue then grows without bound).

        A call arriving at random sees the time-average number of others running (PASTA), so its
        seconds per token are ``latency_seen(b) = ℓ(1 + b)``; by Little's law ``b = x × ℓ(1 + b)``
        with ``x = demand / replicas``: ``b = x × base / (1 − slope × x)``.
        """
        per_replica = demand / replicas
        if per_replica <= 0:
            return 0.0
        denominator = 1.0 - self.slope_s * per_replica
        if denominator <= 0:
            return math.inf
        return per_replica * self.base_s / denominator

    def latency_seen(self, concurrency: float) -> float:
        """Seconds per token of a call arriving at random where ``concurrency`` run on average."""
        return self.latency(1.0 + concurrency)

    @classmethod
    def fit(cls, observations: Sequence[Observation]) -> BatchingCurve | None:
        """Weighted least squares of latency on concurrency; ``None`` with nothing observed.

        Observations all at one concurrency cannot tell the slope: it is taken as 0 (the
        replica batches for free) until the pool runs at another concurrency, which the next
        scaling step brings about. A negative fitted slope (noise) is clamped to 0.
        """
        if not observations:
            return None
        total = sum(o.weight for o in observations)
        mean_b = sum(o.weight * o.concurrency for o in observations) / total
        mean_l = sum(o.weight * o.latency_s for o in observations) / total
        spread = sum(o.weight * (o.concurrency - mean_b) ** 2 for o in observations) / total
        slope = 0.0
        if spread > 0.25:  # concurrencies at least ~0.5 apart on average
            slope = sum(o.weight * (o.concurrency - mean_b) * (o.latency_s - mean_l) for o in observations) / (
                total * spread
            )
            slope = max(slope, 0.0)
        base = mean_l - slope * (mean_b - 1.0)
        if base <= 0:  # a steep fit through noisy points: keep the line through the mean, flatter
            slope = mean_l / mean_b
            base = mean_l - slope * (mean_b - 1.0)
        return cls(base_s=base, slope_s=slope)


PRIOR_SLOPE_RATIO = 0.25  # without a profile: each extra request adds a quarter of a lone one's time
GUESS_SD = 1.0  # ... a guess, not a measurement: reports at two concurrencies soon outweigh it


@dataclass(frozen=True)
class CurveEstimate:
    """A batching curve and how sure its slope is (standard deviation relative to the slope)."""

    curve: BatchingCurve
    slope_sd: float


def refine(
    observations: Sequence[Observation],
    prior: BatchingCurve | None = None,
    *,
    prior_sd: float = 0.5,
    noise: float = 0.1,
    slope_floor: float = 0.25,
) -> CurveEstimate | None:
    """The batching curve from a prior and operating points; ``None`` with neither.

    ``observations`` are operating points: reports averaged by something the noise does not
    touch (the autoscaler keys them by replica count). Grouping raw reports by their own noisy
    concurrency would make spread out of noise, and noise in the concurrency alone (with none in
    the latency) pulls a least-squares slope toward 0.

    The slope is the precision-weighted mean of the prior's slope (relative standard deviation
    ``prior_sd``) and the least-squares slope through the operating points (each report's latency
    off by ``noise`` relative): reports at one operating point leave the prior's slope as it
    is, reports at clearly different ones take over. The slope never falls below ``slope_floor``
    × the prior's. The level comes from the reports (the line passes through their weighted
    mean): it is what this pool runs at now. Without a prior curve (no profile), the prior
    slope is ``PRIOR_SLOPE_RATIO`` × the base the reports imply at that slope: a conservative
    guess, as more slope plans more replicas for a latency target relative to the base, held
    with a relative standard deviation of at least ``GUESS_SD``.
    """
    if not observations:
        return None if prior is None else CurveEstimate(prior, prior_sd)
    points = observations
    total = sum(p.weight for p in points)
    mean_b = sum(p.weight * p.concurrency for p in points) / total
    mean_l = sum(p.weight * p.latency_s for p in points) / total
    if prior is not None and prior.slope_s > 0:
        prior_slope = prior.slope_s
    else:
        prior_slope = PRIOR_SLOPE_RATIO * mean_l / (1.0 + PRIOR_SLOPE_RATIO * (mean_b - 1.0))
        prior_sd = max(prior_sd, GUESS_SD)
    spread = sum(p.weight * (p.concurrency - mean_b) ** 2 for p in points)
    data_precision = spread / (noise * mean_l) ** 2
    prior_precision = 1.0 / (prior_sd * prior_slope) ** 2
    slope = prior_slope
    if spread > 0:
        data_slope = sum(p.weight * (p.concurrency - mean_b) * (p.latency_s - mean_l) for p in points) / spread
        slope = (data_precision * data_slope + prior_precision * prior_slope) / (data_precision + prior_precision)
    slope = max(slope, slope_floor * prior_slope)
    slope_sd = 1.0 / math.sqrt(data_precision + prior_precision) / slope
    base = mean_l - slope * (mean_b - 1.0)
    if base < 0.05 * mean_l:  # a steep line through noisy points: keep it through the mean, positive at 1
        base = 0.05 * mean_l
        slope = (mean_l - base) / (mean_b - 1.0)
    return CurveEstimate(BatchingCurve(base_s=base, slope_s=slope), slope_sd)


def planned_concurrency(curve: BatchingCurve, latency_target_s: float, max_concurrency: float) -> float:
    """``b*``: the mean requests a replica may run so that a call arriving at random sees
    ``ℓ(1 + b*) ≤ latency_target_s`` and finds a free batch slot (``1 + b* ≤ max_concurrency``).

    At least 0.5: where even a lone call misses the target, calls are spread as thin as that.
    """
    room = max_concurrency - 1.0
    if curve.slope_s > 0:
        room = min(room, (latency_target_s - curve.base_s) / curve.slope_s)
    elif curve.base_s > latency_target_s:
        room = 0.0
    return max(room, 0.5)


def replicas_seen(demand: float, curve: BatchingCurve, concurrency: float) -> float:
    """Replicas (unrounded) at which ``demand`` tokens/s arriving at random make each replica run
    ``concurrency`` requests on average (Little's law: ``b = x × ℓ(1 + b)``)."""
    return demand * curve.latency_seen(concurrency) / concurrency


def replicas_for(demand: float, curve: BatchingCurve, target_concurrency: float) -> float:
    """Replicas (unrounded) that serve ``demand`` tokens/s with each at ``target_concurrency``."""
    return demand / curve.throughput(target_concurrency)

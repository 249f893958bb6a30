"""A batching replica's capacity: per-token latency as a function of how many requests it runs.

A replica that batches (HFEngine's decode batch, vLLM's scheduler) writes one token for each
running request per forward, and a forward takes longer as the batch grows. With ``b`` requests
running at once:

    per-token latency   ℓ(b) = base_s + slope_s × (b − 1)     seconds per token each request sees
    throughput          T(b) = b / ℓ(b)                        tokens/s the replica writes

So a replica's tokens per *busy* second is not a constant: it grows with concurrency until the
forwards get slow. A pool is sized for each replica to run at its target concurrency ``b*``, the
largest ``b`` within ``max_concurrency`` (``max_running`` / ``max_num_seqs``) whose ``ℓ(b)`` meets
the per-token latency target, and by Little's law

    replicas = demand × ℓ(b*) / b*        (demand in tokens/s)

The curve is fitted from what replicas measure over windows of busy time (:class:`Observation`:
mean concurrency and per-token latency); the autoscaler (:mod:`glimp_ray.autoscaling`) and the
planner (:mod:`glimp_ray.planner`) share it.
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


def replicas_for(demand: float, curve: BatchingCurve, target_concurrency: float) -> float:
    """Replicas (unrounded) that serve ``demand`` tokens/s with each at ``target_concurrency``."""
    return demand / curve.throughput(target_concurrency)

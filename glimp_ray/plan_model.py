"""The planner's model of a deployment: traced requests at a τ, pools built from profiles, and the
analytic estimate of a replica count's p95 latency.

A :class:`Workload` is the traced requests re-routed at a what-if τ (or large-only: every step
and the answer on the large model, no glimpse), arriving at random at ``rps``. A
:class:`PoolModel` is one replica of a pool: an engine profile (measured, scaled, or fitted from
the same traces) and the calls it runs at once, the engine's maximum or fewer where its KV
budget holds fewer of the workload's contexts.

The analytic estimate (:class:`Analytic`) is the capacity model of :mod:`glimp_ray.capacity`: a
pool's replicas share its tokens/s; a call arriving at random sees the mean number of others
running, ``b = x × ℓ(1 + b)``, and writes each token in ``ℓ(1 + b)``. A request's latency is the
router's overhead plus its calls' model time at those latencies (a call traced on the pool it
runs on keeps its own deviation from the fitted curve); with profiles, the calls are the ones the
simulator runs (a glimpse before every step, the prefill of what a session has not seen). A
pool is overloaded when more than
:data:`FULL_BATCH_PROBABILITY` of its calls would arrive to a full batch (the running calls taken
as Poisson around ``b``): well before 100% of the batch slots, where calls start to queue.
It is fast and is what the searches of :mod:`glimp_ray.plan_search` walk; the simulator
confirms what it finds.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from glimp_ray.capacity import BatchingCurve, Observation
from glimp_ray.policies import routes_large
from glimp_ray.profile import EngineProfile
from glimp_ray.traces import TracedCall, TracedRequest

POOLS = ("small", "large")
# The share of calls that may find their replica's batch full (and queue) before a pool counts
# as overloaded.
FULL_BATCH_PROBABILITY = 0.05


def fit_curves(requests: Sequence[TracedRequest]) -> dict[str, BatchingCurve]:
    """Each pool's batching curve from its traced calls; a pool never traced borrows the other's."""
    points: dict[str, list[Observation]] = {pool: [] for pool in POOLS}
    for r in requests:
        for call in r.calls:
            if call.tokens > 0 and call.model_s > 0 and call.route in points:
                points[call.route].append(Observation(call.concurrency, call.model_s / call.tokens, call.tokens))
    curves = {pool: BatchingCurve.fit(points[pool]) for pool in POOLS}
    if curves["small"] is None and curves["large"] is None:
        raise ValueError("the trace has no generated tokens")
    return {pool: curves[pool] or curves["large" if pool == "small" else "small"] for pool in POOLS}  # type: ignore[misc]


def mean_glimpse_s(requests: Sequence[TracedRequest]) -> float:
    glimpses = [s.glimpse_model_s for r in requests for s in r.steps if s.glimpse_model_s > 0]
    return sum(glimpses) / len(glimpses) if glimpses else 0.0


def traced_profile(pool: str, curve: BatchingCurve, max_concurrency: int, glimpse_s: float) -> EngineProfile:
    """A profile standing for a curve fitted from traces (the simulator builds pools from profiles);
    its KV budget is unbounded: traces do not tell it."""
    points = sorted({1, max_concurrency, *(2**i for i in range(1, 16) if 2**i < max_concurrency)})
    return EngineProfile(
        model=f"traced-{pool}",
        engine="traced",
        dtype="unknown",
        accelerator="traced",
        decode_s={b: curve.latency(b) for b in points},
        prefill_s_per_token=0.0,  # a traced call's model time includes its prefill
        glimpse_s=glimpse_s,
        kv_bytes_per_token=1,
        kv_budget_bytes=1 << 62,
        max_concurrency=max_concurrency,
        notes={"source": "fitted from traced calls: ℓ(b) = base + slope × (b − 1)"},
    )


def router_overhead_s(requests: Sequence[TracedRequest]) -> float:
    """The median of each request's latency outside its calls' model time (router, Ray calls).
    The median, so that a few cold first requests do not set it."""
    return statistics.median(
        max(r.latency_s - sum(c.model_s + c.glimpse_model_s for c in r.calls), 0.0) for r in requests
    )


@dataclass(frozen=True)
class Routed:
    """A traced call as it runs at a what-if τ: its pool, and the glimpse it needs on the small pool."""

    call: TracedCall
    route: str
    glimpse_model_s: float  # 0 when it has no glimpse (a small step, an answer, large-only)


def reroute(requests: Sequence[TracedRequest], threshold: float | None) -> list[list[Routed]]:
    """Every request's calls at τ (``None``: as traced). A step moved to the large pool gets the
    trace's mean glimpse; one moved to the small pool loses its glimpse."""
    mean_glimpse = mean_glimpse_s(requests)
    routed = []
    for r in requests:
        calls = []
        for s in r.steps:
            route = s.route
            if threshold is not None and s.entropy is not None:
                route = "large" if routes_large(s.entropy, threshold) else "small"
            glimpse = 0.0
            if route == "large" and s.entropy is not None:
                glimpse = s.glimpse_model_s if s.route == "large" and s.glimpse_model_s > 0 else mean_glimpse
            calls.append(Routed(s, route, glimpse))
        calls.append(Routed(r.answer, r.answer.route, 0.0))
        routed.append(calls)
    return routed


@dataclass(frozen=True)
class Workload:
    """Traced requests as they run at a τ (or large-only), arriving at random at ``rps``."""

    requests: Sequence[TracedRequest]
    routed: Sequence[Sequence[Routed]]
    rps: float
    overhead_s: float  # per request, outside the models
    threshold: float | None = None
    pools: tuple[str, ...] = POOLS

    @classmethod
    def at(cls, requests: Sequence[TracedRequest], rps: float, threshold: float | None, overhead_s: float) -> Workload:
        return cls(requests, reroute(requests, threshold), rps, overhead_s, threshold)

    @classmethod
    def large_only(cls, requests: Sequence[TracedRequest], rps: float, overhead_s: float) -> Workload:
        routed = [[Routed(c, "large", 0.0) for c in r.calls] for r in requests]
        return cls(requests, routed, rps, overhead_s, None, ("large",))

    @functools.cached_property
    def tokens(self) -> dict[str, float]:
        """Tokens per request each pool generates (a glimpse counts one token on the small pool)."""
        tokens = dict.fromkeys(POOLS, 0.0)
        for calls in self.routed:
            for c in calls:
                tokens[c.route] += c.call.tokens
                tokens["small"] += 1.0 if c.glimpse_model_s > 0 else 0.0
        return {pool: tokens[pool] / len(self.routed) for pool in POOLS}

    @functools.cached_property
    def context_tokens(self) -> int:
        """Mean tokens a request's session holds at its end: what one call's KV takes."""
        return max(1, round(sum(c.tokens for r in self.requests for c in r.calls) / len(self.requests)))

    @property
    def large_step_fraction(self) -> float:
        steps = [c for calls in self.routed for c in calls[:-1]]
        return sum(c.route == "large" for c in steps) / len(steps) if steps else 0.0

    @property
    def large_token_fraction(self) -> float:
        tokens = {p: sum(c.call.tokens for calls in self.routed for c in calls if c.route == p) for p in POOLS}
        total = tokens["small"] + tokens["large"]
        return tokens["large"] / total if total else 0.0


@dataclass(frozen=True)
class PoolModel:
    """One replica of a pool: its profile and the calls it runs at once."""

    profile: EngineProfile
    concurrency_cap: int  # the engine's maximum, or what its KV budget holds of the workload's contexts
    from_trace: bool = False  # the profile was fitted from the same traces
    curve: BatchingCurve = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "curve", self.profile.curve())

    @classmethod
    def of(cls, profile: EngineProfile, workload: Workload, from_trace: bool = False) -> PoolModel:
        return cls(profile, profile.kv_concurrency(workload.context_tokens), from_trace)


def full_batch_probability(concurrency: float, cap: int) -> float:
    """The share of calls arriving to ``cap`` running: P(N ≥ cap), N ~ Poisson(``concurrency``)."""
    if not math.isfinite(concurrency):
        return 1.0
    term, below = math.exp(-concurrency), 0.0
    for k in range(cap):
        below += term
        term *= concurrency / (k + 1)
    return max(0.0, 1.0 - below)


@dataclass(frozen=True)
class Estimate:
    """The analytic model at one replica count."""

    replicas: dict[str, int]
    concurrency: dict[str, float]  # mean calls running per replica
    full_batch: dict[str, float]  # share of calls arriving to a full batch
    p95_s: float  # inf when a pool is overloaded

    @property
    def overloaded(self) -> list[str]:
        return [p for p, share in self.full_batch.items() if share > FULL_BATCH_PROBABILITY]


class Analytic:
    """The analytic p95 of a workload on pools, as a function of the replica counts."""

    def __init__(self, workload: Workload, pools: Mapping[str, PoolModel]) -> None:
        self.workload, self.pools = workload, dict(pools)
        # A request's latency is overhead + fixed + Σ_pool weight[pool] × (seconds per token seen
        # there); a pool's demand is its tokens a request and its seconds a request that do not
        # depend on the batch (glimpses, prefills).
        if any(p.from_trace for p in self.pools.values()):
            weights, fixed = self._traced_calls()
            demand = {p: (workload.tokens[p], 0.0) for p in workload.pools}
        else:
            weights, fixed, demand = self._simulated_calls()
        self._weights = {p: np.array([w[p] for w in weights]) for p in workload.pools}
        self._fixed = np.array(fixed)
        self._demand = demand

    def _traced_calls(self) -> tuple[list[dict[str, float]], list[float]]:
        """Each traced call's model time, rescaled along its pool's curve (glimpses included)."""
        weights: list[dict[str, float]] = []
        small = self.pools.get("small")
        for calls in self.workload.routed:
            weight = dict.fromkeys(self.workload.pools, 0.0)
            for c in calls:
                pool = self.pools[c.route]
                if pool.from_trace and c.route == c.call.route and c.call.model_s > 0:
                    weight[c.route] += c.call.model_s / pool.curve.latency(c.call.concurrency)
                else:
                    weight[c.route] += c.call.tokens
                if c.glimpse_model_s > 0 and small is not None:
                    glimpse = c.glimpse_model_s if small.from_trace else small.profile.glimpse_s
                    weight["small"] += glimpse / small.profile.latency(1.0)
            weights.append(weight)
        return weights, [0.0] * len(weights)

    def _simulated_calls(self) -> tuple[list[dict[str, float]], list[float], dict[str, tuple[float, float]]]:
        """The calls as the simulator runs them (:func:`glimp_ray.sim.workload.replay`): a glimpse
        before every step the small model writes or hands over, each call's prefill of what its
        session has not seen, all at the profiles' costs."""
        from glimp_ray.sim.workload import replay

        weights: list[dict[str, float]] = []
        fixed: list[float] = []
        tokens = dict.fromkeys(self.workload.pools, 0.0)
        busy = dict.fromkeys(self.workload.pools, 0.0)
        for request in self.workload.requests:
            weight = dict.fromkeys(self.workload.pools, 0.0)
            seconds = 0.0
            for call in replay(request, list(self.workload.pools), self.workload.threshold).calls:
                profile = self.pools[call.pool].profile
                weight[call.pool] += call.tokens
                extra = profile.glimpse_s * call.glimpse + profile.prefill_s_per_token * call.prefill_tokens
                seconds += extra
                tokens[call.pool] += call.tokens
                busy[call.pool] += extra
            weights.append(weight)
            fixed.append(seconds)
        count = len(self.workload.requests)
        return weights, fixed, {p: (tokens[p] / count, busy[p] / count) for p in self.workload.pools}

    def low(self, max_replicas: int = 10_000) -> dict[str, int]:
        """The fewest replicas per pool that are not overloaded (at least 1)."""
        low = {}
        for pool in self.workload.pools:
            n = 1
            while n < max_replicas and self._full_batch(pool, n) > FULL_BATCH_PROBABILITY:
                n = min(max_replicas, n * 2)
            lo = n // 2 if n > 1 else 1
            while lo < n:  # the first n in (lo, n] that is not overloaded
                mid = (lo + n) // 2
                if self._full_batch(pool, mid) > FULL_BATCH_PROBABILITY:
                    lo = mid + 1
                else:
                    n = mid
            low[pool] = n
        return low

    def _concurrency(self, pool: str, replicas: int) -> float:
        """Mean calls running per replica (Little's law, each token at ``ℓ(1 + b)``):
        ``b = (x base + y) / (1 − x slope)`` for ``x`` tokens/s and ``y`` fixed seconds/s a replica."""
        tokens, seconds = self._demand[pool]
        if replicas <= 0:
            return math.inf if tokens or seconds else 0.0
        rate = self.workload.rps / replicas
        curve = self.pools[pool].curve
        room = 1 - curve.slope_s * rate * tokens
        if room <= 0:
            return math.inf
        return curve.concurrency_at(rate * tokens, 1) + rate * seconds / room

    def _full_batch(self, pool: str, replicas: int) -> float:
        return full_batch_probability(self._concurrency(pool, replicas), self.pools[pool].concurrency_cap)

    def __call__(self, replicas: Mapping[str, int]) -> Estimate:
        pools = self.workload.pools
        concurrency = {p: self._concurrency(p, replicas[p]) for p in pools}
        full = {p: full_batch_probability(concurrency[p], self.pools[p].concurrency_cap) for p in pools}
        p95 = math.inf
        if all(share <= FULL_BATCH_PROBABILITY for share in full.values()):
            latencies = self._fixed + sum(
                self._weights[p] * self.pools[p].profile.latency(1.0 + concurrency[p]) for p in pools
            )
            p95 = self.workload.overhead_s + float(np.percentile(latencies, 95))  # linear, as eval.metrics
        return Estimate({p: replicas[p] for p in pools}, concurrency, full, p95)

    def p95(self, replicas: Mapping[str, int]) -> float:
        return self(replicas).p95_s

"""Pool sizing from the routing ratio: a pure policy, unit-testable without Ray.

Demand on a pool is what the router sees arriving, split by the routing ratio:

    tokens/s on pool  =  request rate  x  generated tokens per request  x  pool's share of tokens

A replica batches, so what it can serve depends on how many requests it runs at once
(:mod:`glimp_ray.capacity`): per-token latency ``ℓ(b) = base + slope × (b − 1)``. Calls arrive at
random, so a call finds on average the ``b`` others a replica runs and sees ``ℓ(1 + b)``; by
Little's law ``b = x × ℓ(1 + b)`` at ``x`` tokens/s per replica. The pool is sized for the
largest ``b*`` whose ``ℓ(1 + b*)`` meets the latency target and whose ``1 + b*`` fits a replica
(``max_concurrency``, and the KV-limited concurrency of the pool's profile at
``context_tokens``):

    replicas  =  demand × ℓ(1 + b*) / b*

The curve starts from the pool's profile (``PoolScaling.profile``; without one, a conservative
slope) and is refined by the replicas' reports (mean concurrency while busy and seconds per
token), remembered per operating point (:func:`remember`), so that once the pool has run at two
clearly different concurrencies the slope is measured, and reports bunched at one concurrency
never make batching look free (:func:`glimp_ray.capacity.refine`). The step calls in flight are
the backstop (``in flight / (b* + target_queue_per_replica)``): when the ratio shifts toward the
large model its demand rises at once, before its queue builds. A replica that reports no
concurrency and a pool without a profile fall back to ``demand / (service rate ×
target_utilization)`` and ``queued / target_queue_per_replica``. Demand is smoothed over time
and scaling down keeps ``downscale_margin`` spare capacity, so the count does not flap around a
boundary; Ray Serve's ``upscale_delay_s`` / ``downscale_delay_s`` add the time a change must
persist.

``deployments/autoscaling.py`` feeds this from Ray Serve's autoscaling contexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from glimp_ray.capacity import (
    BatchingCurve,
    CurveEstimate,
    Observation,
    planned_concurrency,
    refine,
    replicas_seen,
)
from glimp_ray.profile import EngineProfile


@dataclass(frozen=True)
class PoolScaling:
    """How one pool scales (defaults suit GPUs; every field is set from the serve config)."""

    min_replicas: int = 1
    max_replicas: int = 8
    latency_target_s: float | None = None  # per-token latency a request may see (s/token)
    latency_slack: float = 2.0  # without latency_target_s: the target is this × a lone request's ℓ(1)
    max_concurrency: int | None = None  # requests a replica runs at once; default: what replicas report
    observations: int = 32  # (concurrency, latency) reports kept for the curve
    downscale_margin: float = 0.15  # scale down only to a count with this much spare capacity
    smoothing_s: float = 5.0  # time constant of the demand's exponential smoothing
    # Backstop: step calls a replica may have waiting beyond the b* it runs (or, with no batching
    # curve, in flight) before the queue alone asks for more replicas.
    target_queue_per_replica: float = 8.0
    # Only for replicas that report no concurrency (no batching curve):
    target_utilization: float = 0.7  # share of a replica's measured busy-time tokens/s to plan for
    # The prior: a measured profile of this pool's engine (its curve, max and KV concurrency).
    profile: EngineProfile | None = None
    context_tokens: int | None = None  # a call's context (prompt + transcript) for the KV-limited concurrency
    prior_sd: float = 0.5  # how far (relative) the true slope may be from the profile's
    report_noise: float = 0.1  # relative noise of one report's seconds per token
    memory_half_life: float = 300.0  # reports after which an operating point not seen again counts half
    # The slope counts as measured within this relative standard deviation; until then scaling down
    # goes toward what the estimate asks without downscale_margin, one replica a decision, so the
    # pool runs at new concurrencies and measures them (a conservative prior would otherwise hold
    # it where it started).
    measured_sd: float = 0.08

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {self.target_utilization}")
        if self.target_queue_per_replica <= 0:
            raise ValueError(f"target_queue_per_replica must be > 0, got {self.target_queue_per_replica}")
        if not 0 <= self.downscale_margin < 1:
            raise ValueError(f"downscale_margin must be in [0, 1), got {self.downscale_margin}")
        if self.smoothing_s < 0:
            raise ValueError(f"smoothing_s must be >= 0, got {self.smoothing_s}")
        if self.latency_target_s is not None and self.latency_target_s <= 0:
            raise ValueError(f"latency_target_s must be > 0, got {self.latency_target_s}")
        if self.latency_slack < 1:
            raise ValueError(f"latency_slack must be >= 1, got {self.latency_slack}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.observations < 1:
            raise ValueError(f"observations must be >= 1, got {self.observations}")
        if self.context_tokens is not None and self.context_tokens < 1:
            raise ValueError(f"context_tokens must be >= 1, got {self.context_tokens}")
        if self.prior_sd <= 0 or self.report_noise <= 0 or self.memory_half_life <= 0:
            raise ValueError("prior_sd, report_noise and memory_half_life must be > 0")
        if self.measured_sd <= 0:
            raise ValueError(f"measured_sd must be > 0, got {self.measured_sd}")

    def concurrency_limit(self, reported: float | None) -> float | None:
        """Requests a replica runs at once: the configured or reported max, the profile's, and
        what the profile's KV budget holds at ``context_tokens``."""
        limits = [self.max_concurrency or reported]
        if self.profile is not None:
            limits.append(self.profile.max_concurrency)
            if self.context_tokens is not None:
                limits.append(self.profile.kv_concurrency(self.context_tokens))
        known = [float(v) for v in limits if v]
        return min(known) if known else None

    def latency_target(self, curve: BatchingCurve) -> float:
        """The per-token latency objective: the configured one, or slack over a lone request's
        (measured by the profile where there is one, else the curve's base: an extrapolation from
        the concurrencies the pool ran at)."""
        if self.latency_target_s is not None:
            return self.latency_target_s
        lone = self.profile.latency(1.0) if self.profile is not None else curve.base_s
        return self.latency_slack * lone


@dataclass(frozen=True)
class RouterLoad:
    """What the routers measured over their recent window (summed over router replicas)."""

    request_rate: float  # requests arriving per second
    tokens_per_request: float  # generated tokens (steps + answer) per finished request
    token_share: dict[str, float]  # pool -> share of generated tokens (the routing ratio by tokens)
    step_share: dict[str, float] = field(default_factory=dict)  # pool -> share of steps (reported only)

    def demand(self, pool: str) -> float:
        """Tokens per second this pool must generate."""
        return self.request_rate * self.tokens_per_request * self.token_share.get(pool, 0.0)


@dataclass(frozen=True)
class PoolLoad:
    """What one pool's replicas measured (summed over its replicas)."""

    replicas: int  # running replicas now
    service_rate: float | None  # tokens/s one replica generates while busy; None until measured
    queued: float  # step calls waiting or running across the pool
    concurrency: float | None = None  # mean requests a replica ran while busy (its window)
    latency_s: float | None = None  # seconds per generated token a request saw (same window)
    max_concurrency: float | None = None  # requests a replica may run at once
    kv_concurrency: float | None = None  # requests of today's contexts its KV cache holds at once


@dataclass(frozen=True)
class PoolState:
    """What the policy carries between calls for one pool."""

    demand: float | None = None  # smoothed tokens/s
    updated_at: float | None = None
    service_rate: float | None = None  # last measured rate, kept while a pool is idle
    observations: tuple[Observation, ...] = ()  # recent (concurrency, latency) windows, oldest first
    max_concurrency: float | None = None
    # Operating points: replica count -> weighted mean of its reports, least recently seen first.
    history: tuple[tuple[int, Observation], ...] = ()


@dataclass(frozen=True)
class Decision:
    """A pool's new replica count and why."""

    replicas: int
    desired: float  # unrounded replicas wanted by demand or queue
    demand: float | None  # smoothed tokens/s, None before a router reported
    state: PoolState = field(repr=False)
    target_concurrency: float | None = None  # b*: mean requests each replica is planned to run
    curve: CurveEstimate | None = None  # the batching curve it sized with (prior refined by reports)


def smooth(state: PoolState, demand: float, now: float, time_constant: float) -> float:
    """Exponential smoothing with a time constant, independent of how often it is called."""
    if state.demand is None or state.updated_at is None or time_constant == 0:
        return demand
    weight = 1.0 - math.exp(-max(now - state.updated_at, 0.0) / time_constant)
    return state.demand + weight * (demand - state.demand)


def desired_replicas(demand: float | None, service_rate: float | None, queued: float, scaling: PoolScaling) -> float:
    """Without a batching curve: replicas at the target utilisation of the busy-time rate, or the queue."""
    by_queue = queued / scaling.target_queue_per_replica
    if demand is None or not service_rate:
        return by_queue
    return max(demand / (service_rate * scaling.target_utilization), by_queue)


def batching_replicas(
    demand: float | None, queued: float, curve: BatchingCurve, max_concurrency: float, scaling: PoolScaling
) -> tuple[float, float]:
    """With a batching curve: (replicas, b*) so that a call arriving at random sees the latency
    target with each replica running ``b*`` on average; the calls in flight are the backstop, at
    ``b*`` running plus ``target_queue_per_replica`` waiting each."""
    target = planned_concurrency(curve, scaling.latency_target(curve), max_concurrency)
    by_queue = queued / (target + scaling.target_queue_per_replica)
    if demand is None:
        return by_queue, target
    return max(replicas_seen(demand, curve, target), by_queue), target


def report(load: PoolLoad) -> Observation | None:
    """This call's window as an observation, when the pool reported one."""
    if load.concurrency is None or not load.latency_s or load.latency_s <= 0:
        return None
    return Observation(concurrency=max(load.concurrency, 1.0), latency_s=load.latency_s)


def observe(state: PoolState, point: Observation | None, keep: int) -> tuple[Observation, ...]:
    """The state's recent observations with this call's window added."""
    if point is None or (state.observations and state.observations[-1] == point):
        return state.observations  # the same report again (the policy runs more often than replicas report)
    return (*state.observations, point)[-keep:]


def remember(
    history: tuple[tuple[int, Observation], ...],
    replicas: int,
    point: Observation,
    cap: float,
    half_life: float,
    most: int = 8,
) -> tuple[tuple[int, Observation], ...]:
    """Operating points with ``point`` merged into its replica count's (a running mean whose
    weight stops at ``cap``: recent reports count most); the others fade with ``half_life`` (in
    reports) and the faintest go past ``most``. A pool that settled keeps what its earlier counts
    showed, so the slope stays measured. Keyed by count, not by the reported concurrency: grouping
    by a noisy figure would make a spread out of noise."""
    fade = 0.5 ** (1.0 / half_life)
    merged, others = point, []
    for count, h in history:
        if count == replicas:
            weight = h.weight + point.weight
            step = point.weight / weight
            merged = Observation(
                concurrency=h.concurrency + step * (point.concurrency - h.concurrency),
                latency_s=h.latency_s + step * (point.latency_s - h.latency_s),
                weight=min(weight, cap),
            )
        else:
            others.append((count, Observation(h.concurrency, h.latency_s, h.weight * fade)))
    while len(others) >= most:
        others.remove(min(others, key=lambda item: item[1].weight))
    return (*others, (replicas, merged))


def decide_pool(
    router: RouterLoad | None, pool: str, load: PoolLoad, scaling: PoolScaling, state: PoolState, now: float
) -> Decision:
    """The replica count for one pool; ``router`` is None when no router has reported yet.

    Up to ``ceil(desired)`` at once; down only to a count that still leaves
    ``downscale_margin`` of its capacity spare (the hysteresis band). How long a scale-up or
    -down must persist before it happens is Ray Serve's ``upscale_delay_s`` /
    ``downscale_delay_s``, applied around this policy.
    """
    service_rate = load.service_rate or state.service_rate
    demand = None if router is None else smooth(state, router.demand(pool), now, scaling.smoothing_s)
    point = report(load)
    observations = observe(state, point, scaling.observations)
    history = state.history
    if point is not None and observations is not state.observations:
        history = remember(history, load.replicas, point, scaling.observations, scaling.memory_half_life)
    max_concurrency = load.max_concurrency or state.max_concurrency
    limit = scaling.concurrency_limit(max_concurrency)
    if limit is not None and load.kv_concurrency:
        limit = min(limit, max(load.kv_concurrency, 1.0))
    prior = scaling.profile.curve() if scaling.profile is not None else None
    estimate = refine([h for _, h in history], prior, prior_sd=scaling.prior_sd, noise=scaling.report_noise)
    curve = estimate.curve if estimate is not None else None
    target_concurrency = None
    margin, probing = scaling.downscale_margin, False
    if curve is not None and limit:
        desired, target_concurrency = batching_replicas(demand, load.queued, curve, limit, scaling)
        probing = estimate is not None and estimate.slope_sd > scaling.measured_sd
        if probing:
            margin = 0.0
    else:
        desired = desired_replicas(demand, service_rate, load.queued, scaling)
    current = load.replicas
    wanted = math.ceil(desired - 1e-6)  # a demand that exactly fills n replicas needs n
    if router is None:
        target = max(current, wanted)  # no demand known: the queue can only add
    elif wanted > current:
        target = wanted
    else:
        target = min(current, math.ceil(desired / (1.0 - margin) - 1e-6))
        if probing:  # one replica at a time: each count measures a new operating point
            target = max(target, current - 1)
    target = max(scaling.min_replicas, min(scaling.max_replicas, target))
    new_state = PoolState(
        demand=demand if demand is not None else state.demand,
        updated_at=now if demand is not None else state.updated_at,
        service_rate=service_rate,
        observations=observations,
        max_concurrency=max_concurrency,
        history=history,
    )
    return Decision(
        replicas=target,
        desired=desired,
        demand=demand,
        state=new_state,
        target_concurrency=target_concurrency,
        curve=estimate,
    )

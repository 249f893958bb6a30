"""Pool sizing from the routing ratio: a pure policy, unit-testable without Ray.

Demand on a pool is what the router sees arriving, split by the routing ratio:

    tokens/s on pool  =  request rate  x  generated tokens per request  x  pool's share of tokens

A replica batches, so what it can serve depends on how many requests it runs at once
(:mod:`glimp_ray.capacity`): each replica is planned to run ``b*`` requests, the most its
``max_running`` / ``max_num_seqs`` allows while the per-token latency ``ℓ(b)`` stays within the
target, and a pool needs ``demand × ℓ(b*) / b*`` replicas. The curve ``ℓ(b)`` is fitted from the
replicas' own windows (mean concurrency and seconds per token while busy). The step calls in
flight are the backstop (``in flight / b*``): when the ratio shifts toward the large model its
demand rises at once, before its queue builds. A replica that reports no concurrency falls back
to ``demand / (service rate × target_utilization)`` and ``queued / target_queue_per_replica``.
Demand is smoothed over time and scaling down keeps ``downscale_margin`` spare capacity, so the
count does not flap around a boundary; Ray Serve's ``upscale_delay_s`` / ``downscale_delay_s``
add the time a change must persist.

``deployments/autoscaling.py`` feeds this from Ray Serve's autoscaling contexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from glimp_ray.capacity import BatchingCurve, Observation, replicas_for


@dataclass(frozen=True)
class PoolScaling:
    """How one pool scales (defaults suit GPUs; every field is set from the serve config)."""

    min_replicas: int = 1
    max_replicas: int = 8
    latency_target_s: float | None = None  # per-token latency a request may see (s/token)
    latency_slack: float = 2.0  # without latency_target_s: the target is this × a lone request's ℓ
    max_concurrency: int | None = None  # requests a replica runs at once; default: what replicas report
    observations: int = 32  # (concurrency, latency) reports kept for the curve
    downscale_margin: float = 0.15  # scale down only to a count with this much spare capacity
    smoothing_s: float = 5.0  # time constant of the demand's exponential smoothing
    # Backstop: step calls a replica may have waiting beyond the b* it runs (or, with no batching
    # curve, in flight) before the queue alone asks for more replicas.
    target_queue_per_replica: float = 8.0
    # Only for replicas that report no concurrency (no batching curve):
    target_utilization: float = 0.7  # share of a replica's measured busy-time tokens/s to plan for

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

    def latency_target(self, curve: BatchingCurve) -> float:
        """The per-token latency objective: the configured one, or slack over a lone request's."""
        return self.latency_target_s if self.latency_target_s is not None else self.latency_slack * curve.base_s


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


@dataclass(frozen=True)
class PoolState:
    """What the policy carries between calls for one pool."""

    demand: float | None = None  # smoothed tokens/s
    updated_at: float | None = None
    service_rate: float | None = None  # last measured rate, kept while a pool is idle
    observations: tuple[Observation, ...] = ()  # recent (concurrency, latency) windows, oldest first
    max_concurrency: float | None = None


@dataclass(frozen=True)
class Decision:
    """A pool's new replica count and why."""

    replicas: int
    desired: float  # unrounded replicas wanted by demand or queue
    demand: float | None  # smoothed tokens/s, None before a router reported
    state: PoolState = field(repr=False)
    target_concurrency: float | None = None  # b*: requests each replica is planned to run


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
    demand: float | None,
    queued: float,
    curve: BatchingCurve,
    max_concurrency: float,
    scaling: PoolScaling,
    observed: float,
) -> tuple[float, float]:
    """With a batching curve: (replicas, b*) so each replica runs ``b*`` requests; the calls in
    flight are the backstop, at ``b*`` running plus ``target_queue_per_replica`` waiting each.

    ``observed``: the latest concurrency reported. While every report came at one concurrency the
    slope is unknown; if that concurrency misses the latency target, the pool is sized as if a
    replica's throughput could not grow past what it showed there (instead of planning one
    request per replica); the next reports, at the new count's concurrency, pin the slope down.
    """
    target = curve.target_concurrency(scaling.latency_target(curve), max_concurrency)
    if curve.slope_s == 0 and curve.latency(1) > scaling.latency_target(curve):
        target = min(observed, max_concurrency)
    by_queue = queued / (target + scaling.target_queue_per_replica)
    if demand is None:
        return by_queue, target
    return max(replicas_for(demand, curve, target), by_queue), target


def observe(state: PoolState, load: PoolLoad, keep: int) -> tuple[Observation, ...]:
    """The state's observations with this call's window added (when the pool reported one)."""
    if load.concurrency is None or not load.latency_s or load.latency_s <= 0:
        return state.observations
    point = Observation(concurrency=max(load.concurrency, 1.0), latency_s=load.latency_s)
    if state.observations and state.observations[-1] == point:
        return state.observations  # the same report again (the policy runs more often than replicas report)
    return (*state.observations, point)[-keep:]


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
    observations = observe(state, load, scaling.observations)
    max_concurrency = scaling.max_concurrency or load.max_concurrency or state.max_concurrency
    curve = BatchingCurve.fit(observations)
    target_concurrency = None
    if curve is not None and max_concurrency:
        desired, target_concurrency = batching_replicas(
            demand, load.queued, curve, max_concurrency, scaling, observations[-1].concurrency
        )
    else:
        desired = desired_replicas(demand, service_rate, load.queued, scaling)
    current = load.replicas
    wanted = math.ceil(desired - 1e-6)  # a demand that exactly fills n replicas needs n
    if router is None:
        target = max(current, wanted)  # no demand known: the queue can only add
    elif wanted > current:
        target = wanted
    else:
        target = min(current, math.ceil(desired / (1.0 - scaling.downscale_margin) - 1e-6))
    target = max(scaling.min_replicas, min(scaling.max_replicas, target))
    new_state = PoolState(
        demand=demand if demand is not None else state.demand,
        updated_at=now if demand is not None else state.updated_at,
        service_rate=service_rate,
        observations=observations,
        max_concurrency=max_concurrency,
    )
    return Decision(
        replicas=target, desired=desired, demand=demand, state=new_state, target_concurrency=target_concurrency
    )

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
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

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


class ServiceMeter:
    """A replica's service over a sliding window of busy time, from cumulative counters.

    ``rate``: tokens generated per busy second (busy seconds exclude idle time, so the rate is
    what a replica did while working, not what it was asked to do). ``batching``: the mean
    number of requests it ran while busy (request-seconds in the model per busy second) and the
    seconds per token they saw (request-seconds per token) — one point of the batching curve.
    """

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        # (time, engine's generated tokens, busy s, finished steps' model s, their tokens)
        self.samples: deque[tuple[float, int, float, float, int]] = deque()

    def add(
        self, now: float, generated_tokens: int, busy_s: float, request_s: float = 0.0, request_tokens: int = 0
    ) -> None:
        self.samples.append((now, generated_tokens, busy_s, request_s, request_tokens))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Tokens/s while busy, or None when the window saw too little work to tell."""
        if len(self.samples) < 2:
            return None
        (_, tokens0, busy0, _, _), (_, tokens1, busy1, _, _) = self.samples[0], self.samples[-1]
        busy = busy1 - busy0
        return (tokens1 - tokens0) / busy if busy > 1e-3 and tokens1 > tokens0 else None

    def batching(self) -> tuple[float, float] | None:
        """(mean concurrency while busy, seconds per token), or None without finished steps."""
        if len(self.samples) < 2:
            return None
        (_, _, busy0, seconds0, tokens0), (_, _, busy1, seconds1, tokens1) = self.samples[0], self.samples[-1]
        busy, seconds, tokens = busy1 - busy0, seconds1 - seconds0, tokens1 - tokens0
        if busy <= 1e-3 or seconds <= 0 or tokens <= 0:
            return None
        return max(seconds / busy, 1.0), seconds / tokens


class DemandMeter:
    """A router's request rate and routing ratio over a sliding window of ``window_s``.

    The one meter of the routing ratio: the autoscaling stats and the router's ratio gauge both
    read it. Running totals make :meth:`load` cheap enough to call on every event. A step that
    fell back to the small pool counts for the small pool (it is the small pool's load).
    """

    def __init__(self, window_s: float = 30.0, start: float = 0.0):
        self.window_s = window_s
        self.start = start
        self.arrivals: deque[float] = deque()
        self.steps: deque[tuple[float, str, int, bool]] = deque()  # (time, pool, tokens, thinking step)
        self.requests: deque[tuple[float, int]] = deque()  # (time, generated tokens)
        self._tokens: dict[str, int] = {}
        self._thinking_steps: dict[str, int] = {}
        self._request_tokens = 0
        self.last_tokens_per_request = 0.0
        self.last_token_share: dict[str, float] = {}
        self.last_step_share: dict[str, float] = {}

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)

    def generated(self, now: float, pool: str, tokens: int, thinking: bool = True) -> None:
        """A thinking step (or, with ``thinking=False``, an answer) written by ``pool``."""
        self.steps.append((now, pool, tokens, thinking))
        self._tokens[pool] = self._tokens.get(pool, 0) + tokens
        if thinking:
            self._thinking_steps[pool] = self._thinking_steps.get(pool, 0) + 1

    def finished(self, now: float, tokens: int) -> None:
        """A request finished having generated ``tokens`` in all (steps and answer)."""
        self.requests.append((now, tokens))
        self._request_tokens += tokens

    def observe(self, now: float, record: StepRecordLike, finished_tokens: int | None = None) -> None:
        """A step's or an answer's record (``index`` -1); ``finished_tokens`` ends a request."""
        self.generated(now, served_by(record), record.tokens, thinking=record.index >= 0)
        if finished_tokens is not None:
            self.finished(now, finished_tokens)

    def load(self, now: float) -> RouterLoad:
        """What this router saw; with no traffic in the window, the last ratio is kept."""
        horizon = now - self.window_s
        while self.arrivals and self.arrivals[0] < horizon:
            self.arrivals.popleft()
        while self.steps and self.steps[0][0] < horizon:
            _, pool, tokens, thinking = self.steps.popleft()
            self._tokens[pool] -= tokens
            self._thinking_steps[pool] = self._thinking_steps.get(pool, 0) - thinking
        while self.requests and self.requests[0][0] < horizon:
            self._request_tokens -= self.requests.popleft()[1]
        if self.requests:
            self.last_tokens_per_request = self._request_tokens / len(self.requests)
        if self.steps:
            self.last_token_share = _shares(self._tokens)
        if any(self._thinking_steps.values()):
            self.last_step_share = _shares(self._thinking_steps)
        return RouterLoad(
            request_rate=len(self.arrivals) / min(self.window_s, max(now - self.start, 1e-3)),
            tokens_per_request=self.last_tokens_per_request,
            token_share=dict(self.last_token_share),
            step_share=dict(self.last_step_share),
        )


class StepRecordLike(Protocol):
    """What the meter reads of a :class:`~glimp_ray.collab.StepRecord`."""

    @property
    def index(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def tokens(self) -> int: ...
    @property
    def fell_back(self) -> bool: ...


def served_by(record: StepRecordLike) -> str:
    """The pool whose replicas wrote the record (a fallback's is the small pool)."""
    return "small" if record.fell_back else record.model


def _shares(weights: dict[str, int]) -> dict[str, float]:
    total = sum(weights.values())
    return {pool: w / total for pool, w in weights.items() if w} if total else {}

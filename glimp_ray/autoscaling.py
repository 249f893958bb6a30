"""Pool sizing from the routing ratio: a pure policy, unit-testable without Ray.

Demand on a pool is what the router sees arriving, split by the routing ratio:

    tokens/s on pool  =  request rate  x  generated tokens per request  x  pool's share of tokens

and a pool needs ``demand / (service rate per replica x target utilisation)`` replicas, where
the service rate is what its replicas measured while busy. When the ratio shifts toward the
large model the large pool's demand rises at once, before its queue builds; the queue is only a
backstop (``queued / target_queue_per_replica``). Demand is smoothed over time and scaling down
keeps ``downscale_margin`` spare capacity, so the count does not flap around a boundary; Ray
Serve's ``upscale_delay_s`` / ``downscale_delay_s`` add the time a change must persist.

``deployments/autoscaling.py`` feeds this from Ray Serve's autoscaling contexts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PoolScaling:
    """How one pool scales (defaults suit GPUs; every field is set from the serve config)."""

    min_replicas: int = 1
    max_replicas: int = 8
    target_utilization: float = 0.7  # share of a replica's measured tokens/s to plan for
    target_queue_per_replica: float = 8.0  # backstop: step calls in flight per replica
    downscale_margin: float = 0.15  # scale down only to a count with this much spare capacity
    smoothing_s: float = 5.0  # time constant of the demand's exponential smoothing

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


@dataclass(frozen=True)
class PoolState:
    """What the policy carries between calls for one pool."""

    demand: float | None = None  # smoothed tokens/s
    updated_at: float | None = None
    service_rate: float | None = None  # last measured rate, kept while a pool is idle


@dataclass(frozen=True)
class Decision:
    """A pool's new replica count and why."""

    replicas: int
    desired: float  # unrounded replicas wanted by demand or queue
    demand: float | None  # smoothed tokens/s, None before a router reported
    state: PoolState = field(repr=False)


def smooth(state: PoolState, demand: float, now: float, time_constant: float) -> float:
    """Exponential smoothing with a time constant, independent of how often it is called."""
    if state.demand is None or state.updated_at is None or time_constant == 0:
        return demand
    weight = 1.0 - math.exp(-max(now - state.updated_at, 0.0) / time_constant)
    return state.demand + weight * (demand - state.demand)


def desired_replicas(demand: float | None, service_rate: float | None, queued: float, scaling: PoolScaling) -> float:
    """Replicas the demand needs at the target utilisation, or the queue if it needs more."""
    by_queue = queued / scaling.target_queue_per_replica
    if demand is None or not service_rate:
        return by_queue
    return max(demand / (service_rate * scaling.target_utilization), by_queue)


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
    desired = desired_replicas(demand, service_rate, load.queued, scaling)
    current = load.replicas
    if router is None:
        target = max(current, math.ceil(desired))  # no demand known: the queue can only add
    elif math.ceil(desired) > current:
        target = math.ceil(desired)
    else:
        target = min(current, math.ceil(desired / (1.0 - scaling.downscale_margin)))
    target = max(scaling.min_replicas, min(scaling.max_replicas, target))
    new_state = PoolState(
        demand=demand if demand is not None else state.demand,
        updated_at=now if demand is not None else state.updated_at,
        service_rate=service_rate,
    )
    return Decision(replicas=target, desired=desired, demand=demand, state=new_state)


class ServiceMeter:
    """A replica's service rate: tokens generated per busy second over a sliding window.

    Fed with the engine's cumulative counters; busy seconds exclude idle time, so the rate
    is what a replica can do, not what it was asked to do.
    """

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        self.samples: deque[tuple[float, int, float]] = deque()

    def add(self, now: float, generated_tokens: int, busy_s: float) -> None:
        self.samples.append((now, generated_tokens, busy_s))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Tokens/s while busy, or None when the window saw too little work to tell."""
        if len(self.samples) < 2:
            return None
        (_, tokens0, busy0), (_, tokens1, busy1) = self.samples[0], self.samples[-1]
        busy = busy1 - busy0
        return (tokens1 - tokens0) / busy if busy > 1e-3 and tokens1 > tokens0 else None


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

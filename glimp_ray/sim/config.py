"""What a simulation is given: the pools (:class:`PoolSpec`) and the scenario (:class:`SimConfig`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from glimp_ray.autoscaling import PoolScaling
from glimp_ray.profile import EngineProfile
from glimp_ray.sim.arrivals import Arrivals, as_arrivals
from glimp_ray.sim.machine import Contention, SpeedNoise
from glimp_ray.traces import TracedRequest


@dataclass(frozen=True)
class PoolSpec:
    """One pool: replicas of ``profile``; with ``autoscaling`` the project's policy sizes it.

    ``min_replicas``/``max_replicas`` default to the policy's bounds (or ``replicas``);
    ``upscale_delay_s``/``downscale_delay_s`` are Serve's: how long a decision must persist.
    ``max_concurrency`` (calls a replica runs at once) defaults to the profile's.
    ``joins_at_forward``: a call arriving at a replica that is running a batch waits for the
    forward in progress to end (a uniform share of ``ℓ(b)``, half of it on average) before it
    joins, as a continuous-batching engine admits between forwards (off: it joins at once).
    """

    profile: EngineProfile
    replicas: int
    min_replicas: int | None = None
    max_replicas: int | None = None
    autoscaling: PoolScaling | None = None
    startup_s: float = 0.0
    gpus_per_replica: float = 0.0
    price_per_gpu_hour: float = 0.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 300.0
    session_affinity: bool = False
    max_concurrency: int | None = None
    joins_at_forward: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")
        low, high = self.bounds
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {low}, {high}")
        if self.autoscaling is None and self.replicas < 1:
            raise ValueError("a pool without autoscaling needs replicas >= 1")
        for name in ("startup_s", "gpus_per_replica", "price_per_gpu_hour", "upscale_delay_s", "downscale_delay_s"):
            value = getattr(self, name)
            if value < 0 or math.isnan(value):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")

    @property
    def bounds(self) -> tuple[int, int]:
        policy = self.autoscaling
        low, high = (policy.min_replicas, policy.max_replicas) if policy else (self.replicas, self.replicas)
        low = self.min_replicas if self.min_replicas is not None else low
        high = self.max_replicas if self.max_replicas is not None else high
        return low, high


@dataclass(frozen=True)
class SimConfig:
    """A scenario: traced requests sampled per arrival, pools, arrivals, how long.

    ``threshold``: a what-if τ (``None``: the traced routes). ``router_overhead_s``: the router's
    time per request outside the models; ``call_overhead_s``: per pool call, plus
    ``call_overhead_per_request_s`` for every request running at the time (the router's event
    loop and cores are shared by the requests it runs). Latency percentiles
    count requests arriving after ``warmup_s``. The autoscaler runs every ``metrics_interval_s``
    and its reports cover the last ``look_back_s``. ``in_order``: arrival ``i`` runs
    ``requests[i]`` (cycling), a trace replayed as it ran, instead of a request drawn at random.
    ``contention`` and ``noise``: pools sharing one machine (:mod:`glimp_ray.sim.machine`;
    ``None``: each replica on hardware of its own, at a steady speed).
    """

    requests: Sequence[TracedRequest]
    pools: dict[str, PoolSpec]
    arrivals: Arrivals
    duration_s: float
    threshold: float | None = None
    router_overhead_s: float = 0.0
    metrics_interval_s: float = 5.0
    warmup_s: float = 0.0
    seed: int = 0
    call_overhead_s: float = 0.0
    look_back_s: float = 30.0
    timeline_step_s: float | None = None  # width of the latency timeline's windows (default: ~100 of them)
    in_order: bool = False
    call_overhead_per_request_s: float = 0.0
    contention: Contention | None = None
    noise: SpeedNoise | None = None

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("the simulator needs at least one traced request")
        if not self.pools:
            raise ValueError("the simulator needs at least one pool")
        if not self.duration_s > 0 or math.isinf(self.duration_s):
            raise ValueError(f"duration_s must be a finite number > 0, got {self.duration_s}")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError(f"warmup_s must be in [0, duration_s), got {self.warmup_s}")
        if not self.metrics_interval_s > 0 or not self.look_back_s > 0:
            raise ValueError("metrics_interval_s and look_back_s must be > 0")
        if min(self.router_overhead_s, self.call_overhead_s, self.call_overhead_per_request_s) < 0:
            raise ValueError("router_overhead_s, call_overhead_s and call_overhead_per_request_s must be >= 0")
        as_arrivals(self.arrivals)  # fails early on a bad arrivals value
        if self.contention is not None:
            named = set(self.contention.busy_s) | {q for o in self.contention.busy_s.values() for q in o}
            if not named <= set(self.pools):
                raise ValueError(f"contention names pools that are not simulated: {sorted(named - set(self.pools))}")

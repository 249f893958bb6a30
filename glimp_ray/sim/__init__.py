"""A discrete-event simulator of the deployment (SimPy): router, small and large pools, autoscaler.

Public API (the planner and ``glimp-ray simulate`` use it)::

    from glimp_ray.sim import PoolSpec, SimConfig, SimResult, simulate

    PoolSpec(profile, replicas, min_replicas=None, max_replicas=None, autoscaling=None,
             startup_s=0.0, gpus_per_replica=0.0, price_per_gpu_hour=0.0,
             upscale_delay_s=30.0, downscale_delay_s=300.0,
             session_affinity=False, max_concurrency=None)
    SimConfig(requests, pools={"small": ..., "large": ...}, arrivals, duration_s, threshold=None,
              router_overhead_s=0.0, metrics_interval_s=5.0, warmup_s=0.0, seed=0,
              call_overhead_s=0.0, look_back_s=30.0, timeline_step_s=None, in_order=False,
              call_overhead_per_request_s=0.0, contention=None, noise=None)
    Contention(busy_s={"large": {"small": 0.013}})   # pools sharing one machine's cores
    SpeedNoise(sd, correlation_s, call_sd=0.0, shared=True)  # the machine's speed drifts
    simulate(config, progress=False) -> SimResult
        # .p50_s .p95_s .p99_s (requests arriving after warm-up), .timeline, .replicas,
        # .gpu_hours, .cost, .to_dict(), .save(directory) -> sim.json, sim.png

``arrivals`` is a rate (Poisson), :class:`Poisson`, :class:`LoadSteps`, :class:`Diurnal` or
:class:`TraceTimes`. ``requests`` are :class:`glimp_ray.traces.TracedRequest` (from
:func:`glimp_ray.traces.requests_from_spans`), one drawn at random per arrival; with a
``threshold`` their steps are re-routed by entropy (:mod:`glimp_ray.sim.workload`). Each pool is
replicas of an :class:`~glimp_ray.profile.EngineProfile` running a batch whose per-token time
depends on how many calls run at once (:mod:`glimp_ray.sim.replica`), behind a queue
(:mod:`glimp_ray.sim.pool`); a pool with ``autoscaling`` is sized by
:func:`glimp_ray.autoscaling.decide_pool` with Serve's delays (:mod:`glimp_ray.sim.autoscaler`).
What is and is not modelled, and how it was checked against real runs: docs/simulator.md.
"""

from __future__ import annotations

from glimp_ray.sim.arrivals import Arrivals, Diurnal, LoadSteps, Poisson, TraceTimes
from glimp_ray.sim.config import PoolSpec, SimConfig
from glimp_ray.sim.engine import simulate
from glimp_ray.sim.machine import Contention, SpeedNoise
from glimp_ray.sim.result import SimResult, TimelinePoint

__all__ = [
    "Arrivals",
    "Contention",
    "Diurnal",
    "LoadSteps",
    "Poisson",
    "PoolSpec",
    "SimConfig",
    "SimResult",
    "SpeedNoise",
    "TimelinePoint",
    "TraceTimes",
    "simulate",
]

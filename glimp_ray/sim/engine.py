"""The simulation itself: arrivals, requests walking their calls through the pools, the autoscaler.

A request waits ``router_overhead_s`` (the router's own time), then runs its calls one after the
other (the step loop is sequential), each after ``call_overhead_s`` (plus
``call_overhead_per_request_s`` per request running then). Arrivals stop at
``duration_s``; requests still running then are allowed to finish (up to as long again) so that a
saturated run's tail is not cut off, and cost is counted over ``[0, duration_s]``.
"""

from __future__ import annotations

import math
import random
import sys
import time

import simpy

from glimp_ray.sim.arrivals import as_arrivals
from glimp_ray.sim.autoscaler import PoolController, RouterWindow
from glimp_ray.sim.config import SimConfig
from glimp_ray.sim.machine import Speed
from glimp_ray.sim.pool import Pool
from glimp_ray.sim.result import SimResult, TimelinePoint, percentiles
from glimp_ray.sim.workload import SimRequest, replays


class _Run:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.env = simpy.Environment()
        self.rng = random.Random(config.seed)
        self.sampled = replays(config.requests, config.pools, config.threshold)
        self.pools = {name: Pool(self.env, name, spec) for name, spec in config.pools.items()}
        for name, pool in self.pools.items():
            pool.join_rng = random.Random(f"join-{config.seed}-{name}")
        if config.contention is not None:
            for name, others in config.contention.busy_s.items():
                for other, busy_s in others.items():
                    if busy_s > 0:
                        self.pools[name].slowed_by.append((self.pools[other], busy_s))
                        self.pools[name].plain = False
                        self.pools[other].dependents.append(self.pools[name])
        if config.noise is not None:
            speed = Speed(self.env, config.noise, config.seed, self._speed_changed)
            for pool in self.pools.values():
                pool.speed = speed
                pool.plain = False
        self.router = RouterWindow()
        self.controllers = [PoolController(p) for p in self.pools.values() if p.spec.autoscaling is not None]
        self.done: list[tuple[float, float]] = []  # (arrival, finish)
        self.arrived = 0
        self.running = 0
        self.tokens = dict.fromkeys(self.pools, 0.0)

    def _speed_changed(self) -> None:
        for pool in self.pools.values():
            pool.refresh()

    def request(self, session: int, work: SimRequest) -> simpy.events.ProcessGenerator:
        env, config = self.env, self.config
        start = env.now
        self.arrived += 1
        self.running += 1
        self.router.arrivals.append(start)
        if config.router_overhead_s:
            yield env.timeout(config.router_overhead_s)
        per_call, per_request = config.call_overhead_s, config.call_overhead_per_request_s
        for call in work.calls:
            overhead = per_call + per_request * self.running if per_request else per_call
            if overhead:
                yield env.timeout(overhead)
            yield from self.pools[call.pool].call(call, session)
            self.tokens[call.pool] += call.tokens
        self.running -= 1
        self.done.append((start, env.now))
        self.router.finished.append((env.now, {p: work.tokens(p) for p in self.pools}))

    def arrivals(self) -> simpy.events.ProcessGenerator:
        source = as_arrivals(self.config.arrivals)
        for session, t in enumerate(source.times(self.config.duration_s, self.rng)):
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            if self.config.in_order:
                work = self.sampled[session % len(self.sampled)]
            else:
                work = self.sampled[self.rng.randrange(len(self.sampled))]
            self.env.process(self.request(session, work))

    def control(self) -> simpy.events.ProcessGenerator:
        config = self.config
        while True:
            yield self.env.timeout(config.metrics_interval_s)
            now = self.env.now
            self.router.trim(now - config.look_back_s)
            window = min(config.look_back_s, now)
            load = self.router.load(window)
            for controller in self.controllers:
                controller.step(load, now, config.metrics_interval_s, config.look_back_s)

    def run(self, progress: bool) -> None:
        config = self.config
        self.env.process(self.arrivals())
        if self.controllers:
            self.env.process(self.control())
        chunks = 100
        bar = _progress(config.duration_s) if progress else None
        for i in range(1, chunks + 1):
            self.env.run(until=config.duration_s * i / chunks)
            if bar is not None:
                bar(self.env.now)
        gpu_seconds = {name: self._gpu_seconds(pool) for name, pool in self.pools.items()}
        self.gpu_seconds = gpu_seconds
        limit = 2 * config.duration_s
        while self.running and self.env.now < limit:  # drain: let the arrived requests finish
            self.env.run(until=min(self.env.now + config.metrics_interval_s, limit))
        if bar is not None:
            sys.stderr.write("\n")

    def _gpu_seconds(self, pool: Pool) -> float:
        pool.close()
        return pool.gpu_replica_s * pool.spec.gpus_per_replica

    def result(self, wall_s: float) -> SimResult:
        config = self.config
        counted = [end - start for start, end in self.done if start >= config.warmup_s]
        p50, p95, p99 = percentiles(counted)
        step = config.timeline_step_s or max(config.metrics_interval_s, config.duration_s / 100)
        buckets: dict[int, list[float]] = {}
        for start, end in self.done:
            buckets.setdefault(int(end // step), []).append(end - start)
        timeline = []
        for index in range(math.ceil(config.duration_s / step)):
            latencies = buckets.get(index, [])
            timeline.append(TimelinePoint(index * step, (index + 1) * step, len(latencies), *percentiles(latencies)))
        replicas = {}
        for name, pool in self.pools.items():
            points = [(t, n) for t, n in pool.timeline if t <= config.duration_s]
            compact = [points[0]]
            for t, n in points[1:]:
                if t == compact[-1][0]:
                    compact[-1] = (t, n)
                elif n != compact[-1][1]:
                    compact.append((t, n))
            replicas[name] = compact
        gpu_hours = {name: s / 3600 for name, s in self.gpu_seconds.items()}
        cost = {name: gpu_hours[name] * self.pools[name].spec.price_per_gpu_hour for name in self.pools}
        return SimResult(
            p50_s=p50,
            p95_s=p95,
            p99_s=p99,
            requests=len(counted),
            arrived=self.arrived,
            unfinished=self.running,
            timeline=timeline,
            replicas=replicas,
            gpu_hours=gpu_hours,
            cost=cost,
            duration_s=config.duration_s,
            tokens=dict(self.tokens),
            wall_s=wall_s,
            mean_s=sum(counted) / len(counted) if counted else math.nan,
        )


def _progress(total_s: float):  # type: ignore[no-untyped-def]
    started = time.perf_counter()

    def show(now: float) -> None:
        elapsed = time.perf_counter() - started
        sys.stderr.write(f"\rsimulated {now:,.0f} / {total_s:,.0f} s  ({elapsed:.1f} s wall)")
        sys.stderr.flush()

    return show


def simulate(config: SimConfig, progress: bool = False) -> SimResult:
    """Run ``config`` and return its :class:`SimResult` (deterministic for a given seed)."""
    started = time.perf_counter()
    run = _Run(config)
    run.run(progress)
    return run.result(time.perf_counter() - started)

"""The project's autoscaling policy in the loop, wrapped as Ray Serve wraps it.

Every ``metrics_interval_s`` the controller builds the reports a deployment gives over the last
``look_back_s``: the router's request rate, generated tokens per finished request and each pool's
share of them; per pool, the mean calls a replica ran while busy, the seconds per token the
decoding calls saw, the tokens per busy second, the calls in flight and the max concurrency. It
calls :func:`glimp_ray.autoscaling.decide_pool` with them and applies the decision as Serve's
autoscaling state does: a decision above (below) the current target must repeat for
``upscale_delay_s`` (``downscale_delay_s``) before the target moves, clipped to the pool's
bounds. ``PoolLoad.replicas`` is Serve's target count (running and starting replicas).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from glimp_ray.autoscaling import PoolLoad, PoolState, RouterLoad, decide_pool
from glimp_ray.sim.pool import Pool, PoolStats


@dataclass
class RouterWindow:
    """What the router saw: arrival times and finished requests' tokens per pool."""

    arrivals: deque[float] = field(default_factory=deque)
    finished: deque[tuple[float, dict[str, int]]] = field(default_factory=deque)

    def trim(self, since: float) -> None:
        while self.arrivals and self.arrivals[0] < since:
            self.arrivals.popleft()
        while self.finished and self.finished[0][0] < since:
            self.finished.popleft()

    def load(self, window_s: float) -> RouterLoad | None:
        if not self.finished:
            return None
        totals: dict[str, float] = {}
        for _, tokens in self.finished:
            for pool, n in tokens.items():
                totals[pool] = totals.get(pool, 0) + n
        all_tokens = sum(totals.values())
        if all_tokens <= 0:
            return None
        return RouterLoad(
            request_rate=len(self.arrivals) / window_s,
            tokens_per_request=all_tokens / len(self.finished),
            token_share={pool: n / all_tokens for pool, n in totals.items()},
        )


@dataclass
class PoolController:
    """One autoscaled pool: the policy's state, Serve's decision counter, past counters."""

    pool: Pool
    state: PoolState = field(default_factory=PoolState)
    counter: int = 0  # > 0: consecutive decisions above the target, < 0: below
    snapshots: deque[tuple[float, PoolStats]] = field(default_factory=deque)

    def report(self, now: float, look_back_s: float) -> PoolLoad:
        stats = self.pool.stats
        current = PoolStats(**vars(stats))
        self.snapshots.append((now, current))
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= now - look_back_s:
            self.snapshots.popleft()
        _, old = self.snapshots[0]
        busy = current.busy_s - old.busy_s
        tokens = current.tokens - old.tokens
        measured = busy > 1e-9 and tokens > 1e-9
        return PoolLoad(
            replicas=self.pool.target,
            service_rate=tokens / busy if measured else None,
            queued=float(self.pool.in_flight),
            concurrency=(current.batch_area - old.batch_area) / busy if measured else None,
            latency_s=(current.decode_area - old.decode_area) / tokens if measured else None,
            max_concurrency=float(self.pool.max_concurrency),
        )

    def step(self, router: RouterLoad | None, now: float, interval_s: float, look_back_s: float) -> None:
        spec = self.pool.spec
        assert spec.autoscaling is not None
        load = self.report(now, look_back_s)
        decision = decide_pool(router, self.pool.name, load, spec.autoscaling, self.state, now)
        self.state = decision.state
        low, high = spec.bounds
        wanted = max(low, min(high, decision.replicas))
        current = self.pool.target
        if wanted > current:
            self.counter = max(self.counter, 0) + 1
            if self.counter * interval_s >= spec.upscale_delay_s:
                self.pool.scale_to(wanted)
                self.counter = 0
        elif wanted < current:
            self.counter = min(self.counter, 0) - 1
            if -self.counter * interval_s >= spec.downscale_delay_s:
                self.pool.scale_to(wanted)
                self.counter = 0
        else:
            self.counter = 0

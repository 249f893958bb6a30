"""The batching curve, and the autoscaler driven by a replica whose service rate depends on how many
requests it runs at once (continuous batching), settling without flapping."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from glimp_ray.autoscaling import PoolLoad, PoolScaling, PoolState, RouterLoad, decide_pool
from glimp_ray.capacity import BatchingCurve, Observation

TOKENS_PER_CALL = 100.0  # a step call's tokens, to turn a backlog of tokens into calls


def test_curve_arithmetic() -> None:
    curve = BatchingCurve(base_s=0.02, slope_s=0.004)
    assert curve.latency(1) == pytest.approx(0.02)
    assert curve.latency(11) == pytest.approx(0.06)
    assert curve.throughput(11) == pytest.approx(11 / 0.06)
    # ℓ(b) <= 0.05 up to b = 8.5; capped by what a replica may run.
    assert curve.target_concurrency(0.05, 32) == pytest.approx(8.5)
    assert curve.target_concurrency(0.05, 4) == 4
    assert curve.target_concurrency(0.01, 32) == 1.0  # even one request misses it
    # Random arrivals: a call sees the mean b others (PASTA), b = x * ℓ(1 + b) (Little's law).
    b = curve.concurrency_at(1000.0, 6)
    assert b == pytest.approx(1000.0 / 6 * curve.latency_seen(b))
    assert b == pytest.approx(10.0)  # 166.7 tokens/s x 20 ms / (1 - 0.004 x 166.7)
    assert curve.concurrency_at(1000.0, 1) == float("inf")  # 1000 tokens/s is past one replica's limit
    assert BatchingCurve(0.03).concurrency_at(10.0, 1) == pytest.approx(0.3)  # light load: b < 1


def test_fit_recovers_a_line_and_refuses_to_guess_a_slope_from_one_concurrency() -> None:
    points = [Observation(b, 0.02 + 0.004 * (b - 1)) for b in (1.5, 4.0, 9.0, 16.0)]
    curve = BatchingCurve.fit(points)
    assert curve is not None
    assert curve.base_s == pytest.approx(0.02, rel=1e-9)
    assert curve.slope_s == pytest.approx(0.004, rel=1e-9)
    flat = BatchingCurve.fit([Observation(16.0, 0.05), Observation(16.2, 0.06)])
    assert flat is not None and flat.slope_s == 0 and flat.base_s == pytest.approx(0.055)
    assert BatchingCurve.fit([]) is None
    with pytest.raises(ValueError):
        Observation(0.5, 0.01)


def simulate(
    demand: float,
    latency: Callable[[float], float],
    max_concurrency: int,
    scaling: PoolScaling,
    ticks: int = 40,
    replicas: int = 1,
) -> list[int]:
    """Replica counts over ``ticks`` policy calls (1 s apart) for a constant demand in tokens/s.

    Each tick every replica runs ``b`` requests, where ``b`` is the concurrency whose throughput
    ``b / latency(b)`` is its share of the demand, or ``max_concurrency`` when that is not enough
    (the rest waits and accumulates as a backlog of step calls); they report what the model
    servers report: tokens/s while busy, mean concurrency, seconds per token and calls in flight.
    """
    state, backlog, history = PoolState(), 0.0, []
    for now in range(ticks):
        share = demand / replicas
        lo, hi = 0.0, float(max_concurrency)
        if hi / latency(hi) < share:
            b = hi
        else:
            for _ in range(60):  # throughput grows with b: bisect
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if mid / latency(mid) < share else (lo, mid)
            b = hi
        capacity = replicas * b / latency(b)
        backlog = max(0.0, backlog + (demand - capacity) / TOKENS_PER_CALL)
        load = PoolLoad(
            replicas=replicas,
            service_rate=b / latency(b),
            queued=replicas * b + backlog,
            concurrency=max(b, 1.0),
            latency_s=latency(b),
            max_concurrency=max_concurrency,
        )
        router = RouterLoad(request_rate=demand / 1000.0, tokens_per_request=1000.0, token_share={"large": 1.0})
        decision = decide_pool(router, "large", load, scaling, state, float(now))
        state, replicas = decision.state, decision.replicas
        history.append(replicas)
    return history


FINDING_1 = PoolScaling(min_replicas=1, max_replicas=32, target_utilization=0.6, smoothing_s=0)


@pytest.mark.parametrize(("load", "expected"), [(1, 1), (2, 2), (4, 4)])
def test_a_batching_replica_is_filled_before_another_is_added(load: int, expected: int) -> None:
    # Finding 1: 30 tokens/s per request whatever the batch, 16 requests per replica at most;
    # 480 tokens/s is 16 requests, which one replica holds. The busy-time policy went
    # 1 -> 2 -> 4 -> ... -> 18 replicas here; the batching-aware one stays where it should.
    history = simulate(480.0 * load, lambda b: 1 / 30, 16, FINDING_1)
    assert history[-30:] == [expected] * 30, history
    assert max(history) == expected  # no overshoot on the way


def test_pool_settles_where_the_latency_target_puts_it() -> None:
    # Forwards slow down as the batch grows: ℓ(b) = 20 ms + 4 ms per extra request, so at most
    # 8.5 requests per replica keep 50 ms per token; 1000 tokens/s then needs 5.9 replicas.
    def latency(b: float) -> float:
        return 0.02 + 0.004 * max(b - 1, 0)

    scaling = PoolScaling(min_replicas=1, max_replicas=16, latency_target_s=0.05, smoothing_s=0)
    history = simulate(1000.0, latency, 32, scaling, ticks=30)
    settled = history[-20:]
    assert len(set(settled)) == 1, history  # no flapping
    # 6 fills each replica to 8.3 requests; the downscale margin may keep one more on the way down.
    assert settled[0] in (6, 7), history
    # The first report (32 requests at 144 ms per token) cannot tell the slope; sizing as if
    # throughput could not grow past it adds 5 replicas, not max_replicas.
    assert max(history) <= 7, history
    x = 1000.0 / settled[0]  # the simulation's steady state: b / ℓ(b) = x
    b = x * (0.02 - 0.004) / (1 - 0.004 * x)
    assert latency(b) <= 0.05


def test_without_concurrency_reports_the_busy_time_policy_is_kept() -> None:
    # A replica that reports no batching point keeps the old arithmetic (and its queue backstop).
    load = PoolLoad(replicas=1, service_rate=100.0, queued=0.0)
    router = RouterLoad(request_rate=1.0, tokens_per_request=150.0, token_share={"large": 1.0})
    scaling = PoolScaling(target_utilization=0.5, smoothing_s=0)
    assert decide_pool(router, "large", load, scaling, PoolState(), 0.0).replicas == 3

"""The routing-ratio policy as pure functions: demand follows the ratio, bounds, hysteresis."""

from __future__ import annotations

import math

import pytest

from glimp_ray.autoscaling import PoolLoad, PoolScaling, PoolState, RouterLoad, decide_pool, desired_replicas
from glimp_ray.meters import DemandMeter, ServiceMeter

# A pool replica serves 100 tokens/s; requests arrive at 2/s with 300 tokens each.
RATE = 100.0
NO_SMOOTHING = PoolScaling(min_replicas=1, max_replicas=10, target_utilization=0.5, smoothing_s=0)


def router(large_share: float, request_rate: float = 2.0) -> RouterLoad:
    return RouterLoad(request_rate, 300.0, {"small": 1 - large_share, "large": large_share})


def decide(large_share: float, replicas: int, scaling: PoolScaling = NO_SMOOTHING, queued: float = 0.0) -> int:
    load = PoolLoad(replicas=replicas, service_rate=RATE, queued=queued)
    return decide_pool(router(large_share), "large", load, scaling, PoolState(), now=0.0).replicas


def test_demand_is_rate_times_tokens_times_share() -> None:
    assert router(0.25).demand("large") == pytest.approx(150.0)
    assert router(0.25).demand("small") == pytest.approx(450.0)
    # 150 tokens/s at 50% of 100 tokens/s per replica: 3 replicas.
    assert desired_replicas(150.0, RATE, 0.0, NO_SMOOTHING) == pytest.approx(3.0)


def test_large_pool_follows_the_routing_ratio() -> None:
    counts = [decide(share, replicas=1) for share in (0.1, 0.25, 0.5, 0.75)]
    assert counts == [2, 3, 6, 9]
    # The small pool moves the other way for the same router load.
    small = [
        decide_pool(router(s), "small", PoolLoad(1, RATE, 0.0), NO_SMOOTHING, PoolState(), 0.0).replicas
        for s in (0.1, 0.5, 0.75)
    ]
    assert small == [10, 6, 3]


def test_bounds_are_kept() -> None:
    bounded = PoolScaling(min_replicas=2, max_replicas=4, target_utilization=0.5, smoothing_s=0)
    assert decide(0.0, replicas=3, scaling=bounded) == 2
    assert decide(1.0, replicas=3, scaling=bounded) == 4
    with pytest.raises(ValueError, match="min_replicas"):
        PoolScaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_utilization"):
        PoolScaling(target_utilization=0)


def test_hysteresis_scales_down_only_with_spare_capacity() -> None:
    # Share 0.25 wants exactly 3.0 replicas: 3 stays 3 and 2 goes up to 3.
    assert decide(0.25, replicas=3) == 3
    assert decide(0.25, replicas=2) == 3
    # 1.8 replicas' worth: 2 would run at 90% of the target, inside the 15% band: stay at 3.
    assert decide(0.15, replicas=3) == 3
    # 1.68 replicas' worth: 2 replicas keep 16% spare, so it scales down (to 2, not 1).
    assert decide(0.14, replicas=3) == 2
    assert decide(0.05, replicas=3) == 1


def test_up_at_once_down_stepwise_around_a_boundary() -> None:
    # Oscillating demand around 2.0 replicas' worth never makes the count flap.
    counts, replicas = [], 1
    for share in (0.17, 0.16, 0.17, 0.16, 0.17, 0.16):
        replicas = decide(share, replicas=replicas)
        counts.append(replicas)
    assert counts == [3, 3, 3, 3, 3, 3]


def test_smoothing_damps_a_spike() -> None:
    scaling = PoolScaling(min_replicas=1, max_replicas=10, target_utilization=0.5, smoothing_s=10.0)
    state = PoolState()
    load = PoolLoad(replicas=1, service_rate=RATE, queued=0.0)
    first = decide_pool(router(0.1), "large", load, scaling, state, now=0.0)
    assert first.demand == pytest.approx(60.0)
    # One second of a ratio jump moves the smoothed demand ~10% of the way.
    spike = decide_pool(router(0.9), "large", load, scaling, first.state, now=1.0)
    assert spike.demand == pytest.approx(60.0 + (540.0 - 60.0) * (1 - math.exp(-0.1)))
    assert spike.replicas == 3  # 2.1 replicas' worth, against 10.8 unsmoothed
    # Sustained for a minute, it gets there.
    later = decide_pool(router(0.9), "large", load, scaling, spike.state, now=60.0)
    assert later.replicas == 10


def test_queue_is_a_backstop_and_nothing_measured_keeps_the_count() -> None:
    scaling = PoolScaling(min_replicas=1, max_replicas=10, target_queue_per_replica=4, smoothing_s=0)
    unmeasured = PoolLoad(replicas=2, service_rate=None, queued=0.0)
    assert decide_pool(None, "large", unmeasured, scaling, PoolState(), 0.0).replicas == 2
    queued = PoolLoad(replicas=2, service_rate=None, queued=20.0)
    assert decide_pool(None, "large", queued, scaling, PoolState(), 0.0).replicas == 5
    # A queue beyond what the ratio predicts still scales up.
    assert decide(0.1, replicas=1, scaling=scaling, queued=24.0) == 6


def test_service_rate_is_kept_while_idle() -> None:
    load = PoolLoad(replicas=3, service_rate=RATE, queued=0.0)
    first = decide_pool(router(0.25), "large", load, NO_SMOOTHING, PoolState(), 0.0)
    idle = PoolLoad(replicas=3, service_rate=None, queued=0.0)
    again = decide_pool(router(0.25), "large", idle, NO_SMOOTHING, first.state, 1.0)
    assert again.state.service_rate == RATE and again.replicas == 3


def test_service_meter_counts_busy_time_only() -> None:
    meter = ServiceMeter(window_s=10)
    assert meter.rate() is None
    meter.add(0.0, 0, 0.0)
    meter.add(5.0, 200, 2.0)  # 200 tokens in 2 busy seconds of 5
    assert meter.rate() == pytest.approx(100.0)
    meter.add(20.0, 200, 2.0)  # idle since: the old samples age out, nothing to tell
    meter.add(25.0, 200, 2.0)
    assert meter.rate() is None


def test_service_meter_measures_a_batching_point() -> None:
    meter = ServiceMeter(window_s=10)
    meter.add(0.0, 0, 0.0, 0.0, 0)
    assert meter.batching() is None
    # 2 busy seconds in which finished calls spent 6 request-seconds on 300 tokens: 3 calls at
    # once on average, 20 ms per token each.
    meter.add(5.0, 300, 2.0, 6.0, 300)
    assert meter.batching() == (pytest.approx(3.0), pytest.approx(0.02))


def test_demand_meter_tracks_rate_and_ratio_over_its_window() -> None:
    meter = DemandMeter(window_s=10, start=0.0)
    for t in range(10):
        meter.arrived(float(t))
        meter.generated(float(t), "small", 30)
        meter.generated(float(t), "large", 10)
        meter.finished(float(t), 40)
    load = meter.load(10.0)
    assert load.request_rate == pytest.approx(1.0)
    assert load.tokens_per_request == pytest.approx(40.0)
    assert load.token_share == pytest.approx({"small": 0.75, "large": 0.25})
    assert load.step_share == pytest.approx({"small": 0.5, "large": 0.5})
    # The ratio shifts: only large steps in the next window.
    for t in range(10, 20):
        meter.arrived(float(t))
        meter.generated(float(t), "large", 40)
    shifted = meter.load(20.0)
    assert shifted.token_share == pytest.approx({"large": 1.0})
    assert shifted.tokens_per_request == pytest.approx(40.0)  # kept from the last finished requests
    # No traffic: the rate drops to zero, the last ratio is kept.
    idle = meter.load(100.0)
    assert idle.request_rate == 0.0 and idle.token_share == pytest.approx({"large": 1.0})


def test_operating_points_are_kept_per_replica_count_and_fade() -> None:
    from glimp_ray.autoscaling import remember
    from glimp_ray.capacity import Observation

    history = remember((), 4, Observation(8.0, 0.040), cap=4, half_life=1)
    history = remember(history, 4, Observation(9.0, 0.044), cap=4, half_life=1)

    def figures(h: tuple[tuple[int, Observation], ...]) -> list[tuple[int, float, float, float]]:
        return [(n, o.concurrency, o.latency_s, o.weight) for n, o in h]

    assert figures(history) == [(4, 8.5, pytest.approx(0.042), 2.0)]  # the running mean of count 4
    history = remember(history, 8, Observation(4.0, 0.030), cap=4, half_life=1)
    # Count 4 is kept at half its weight (a half-life of one report): its slope information stays.
    assert figures(history) == [(4, 8.5, pytest.approx(0.042), 1.0), (8, 4.0, 0.030, 1.0)]
    for _ in range(10):  # weight stops at the cap: recent reports count most
        history = remember(history, 8, Observation(5.0, 0.034), cap=4, half_life=1000)
    count, point = history[-1]
    assert count == 8 and point.weight == 4 and point.concurrency == pytest.approx(5.0, rel=0.1)


def test_kv_limited_concurrency_caps_what_a_replica_is_planned_to_run() -> None:
    # A replica reports it ran 8 calls at 20 ms per token and may run 32, but its KV cache holds
    # only 4 of today's contexts: b* = 3 others (a free slot for an arrival), whatever the curve.
    router = RouterLoad(request_rate=1.0, tokens_per_request=300.0, token_share={"large": 1.0})
    load = PoolLoad(replicas=1, service_rate=None, queued=0.0, concurrency=8.0, latency_s=0.02, max_concurrency=32)
    scaling = PoolScaling(smoothing_s=0, latency_target_s=1.0)
    free = decide_pool(router, "large", load, scaling, PoolState(), 0.0)
    assert free.target_concurrency == pytest.approx(31.0)
    limited = PoolLoad(**{**load.__dict__, "kv_concurrency": 4.0})
    decision = decide_pool(router, "large", limited, scaling, PoolState(), 0.0)
    assert decision.target_concurrency == pytest.approx(3.0)
    assert decision.curve is not None
    assert decision.desired == pytest.approx(300.0 * decision.curve.curve.latency(4.0) / 3.0)


def test_an_unmeasured_slope_scales_down_one_replica_at_a_time() -> None:
    # One report at 20 replicas: the slope is the prior's guess, so the pool steps down one
    # replica a decision (no margin) to measure new concurrencies, instead of jumping.
    router = RouterLoad(request_rate=1.0, tokens_per_request=300.0, token_share={"large": 1.0})
    load = PoolLoad(replicas=20, service_rate=None, queued=0.0, concurrency=1.5, latency_s=0.02, max_concurrency=16)
    decision = decide_pool(router, "large", load, PoolScaling(smoothing_s=0, max_replicas=32), PoolState(), 0.0)
    assert decision.curve is not None and decision.curve.slope_sd > 0.15
    assert decision.desired < 3 and decision.replicas == 19

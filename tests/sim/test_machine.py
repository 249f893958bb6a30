"""Pools sharing one machine: contention between pools, speed noise, joins at forward boundaries,
router time growing with the requests running, and in-order replay."""

from __future__ import annotations

import statistics

import pytest

from glimp_ray.sim import Contention, PoolSpec, SimConfig, SpeedNoise, TraceTimes, simulate
from glimp_ray.traces import TracedCall, TracedRequest
from tests.sim.helpers import one_call, profile


def on(pool: str, tokens: int, index: int = 0) -> TracedRequest:
    """A request that is one answer call of ``tokens`` on ``pool``."""
    return TracedRequest(f"{pool}{index}", (), TracedCall(pool, None, tokens, 0.0), 0.0)


def two_pools(small_s: float = 0.01, large_s: float = 0.02, **large: object) -> dict[str, PoolSpec]:
    return {
        "small": PoolSpec(profile({1: small_s, 8: small_s}), 1),
        "large": PoolSpec(profile({1: large_s, 8: large_s}), 1, **large),  # type: ignore[arg-type]
    }


def latencies(config: SimConfig) -> list[float]:
    from glimp_ray.sim.engine import _Run

    run = _Run(config)
    run.run(False)
    return [end - start for start, end in sorted(run.done)]


def test_a_busy_pool_slows_the_other_by_its_contention_exactly() -> None:
    # The large call (100 tokens at 20 ms) starts with the small pool busy for its first 0.5 s
    # (50 small tokens at 10 ms): 0.5 s at 20 + 10 ms a token (about 16.7 tokens), the other 83.3
    # at 20 ms: 0.5 + 83.33 × 0.02 = 2.1667 s. Without contention: 2 s.
    requests = [on("small", 50), on("large", 100)]
    contention = Contention({"large": {"small": 0.01}})
    base = SimConfig(requests, two_pools(), TraceTimes((0.0, 0.0)), 10.0, in_order=True)
    slowed = SimConfig(requests, two_pools(), TraceTimes((0.0, 0.0)), 10.0, in_order=True, contention=contention)
    assert latencies(base) == pytest.approx([0.5, 2.0], rel=1e-6)
    assert latencies(slowed) == pytest.approx([0.5, 0.5 + (100 - 0.5 / 0.03) * 0.02], rel=1e-6)


def test_contention_names_only_simulated_pools() -> None:
    with pytest.raises(ValueError, match="not simulated"):
        SimConfig([one_call(1)], two_pools(), 1.0, 10.0, contention=Contention({"large": {"medium": 0.01}}))
    with pytest.raises(ValueError, match="itself"):
        Contention({"large": {"large": 0.01}})


def test_speed_noise_keeps_the_mean_and_widens_the_tail() -> None:
    # Calls one at a time (no queueing): a call's time is its tokens × ℓ × its speed factor.
    requests = [on("large", 50)]
    times = TraceTimes(tuple(2.0 * i for i in range(2000)))
    pools = {"large": PoolSpec(profile({1: 0.01, 8: 0.01}), 1)}
    steady = latencies(SimConfig(requests, pools, times, 4000.0))
    assert steady[0] == pytest.approx(0.5, rel=1e-6) and max(steady) == pytest.approx(0.5, rel=1e-6)
    for noise in (SpeedNoise(0.0, 1.0, call_sd=0.3), SpeedNoise(0.3, 5.0)):
        noisy = latencies(SimConfig(requests, pools, times, 4000.0, noise=noise, seed=3))
        assert statistics.fmean(noisy) == pytest.approx(0.5, rel=0.05)
        p95 = statistics.quantiles(noisy, n=20)[-1]
        assert p95 > 0.5 * 1.3  # exp(1.645 × 0.3 − 0.045) ≈ 1.56 × the steady time


def test_a_shared_drift_moves_calls_close_in_time_together() -> None:
    # Two pools on one machine: with a shared drift slow calls on one pool come with slow calls
    # on the other; with one drift per replica they do not. (The small call, 0.1 s, ends well
    # before the large one, 0.5 s, so each pair sorts small first.)
    requests = [on("small", 10), on("large", 25)]
    times = TraceTimes(tuple(t for i in range(1500) for t in (3.0 * i, 3.0 * i)))

    def correlation(shared: bool) -> float:
        noise = SpeedNoise(0.3, 20.0, shared=shared)
        done = latencies(SimConfig(requests, two_pools(), times, 4500.0, in_order=True, noise=noise, seed=1))
        return statistics.correlation(done[0::2], done[1::2])

    assert correlation(True) > 0.8
    assert abs(correlation(False)) < 0.2


def test_joins_at_forward_wait_for_the_forward_in_progress() -> None:
    # A flat curve (10 ms a token whatever the batch) and a call that runs all along: every
    # one-token probe waits U(0, 10 ms) for the forward in progress, then takes 10 ms.
    requests = [on("large", 10**6)] + [on("large", 1, i) for i in range(1, 1001)]
    times = TraceTimes((0.0, *(0.5 + 0.05 * i for i in range(1000))))
    pools = {"large": PoolSpec(profile({1: 0.01, 8: 0.01}), 1, joins_at_forward=True)}
    probes = latencies(SimConfig(requests, pools, times, 60.0, in_order=True))
    assert min(probes) >= 0.01 - 1e-9 and max(probes) <= 0.02 + 1e-9
    assert statistics.fmean(probes) == pytest.approx(0.015, rel=0.03)
    idle = {"large": PoolSpec(profile({1: 0.01, 8: 0.01}), 1, joins_at_forward=True)}
    alone = latencies(SimConfig([on("large", 1)], idle, TraceTimes((0.0, 1.0)), 5.0))
    assert alone == pytest.approx([0.01, 0.01], rel=1e-6)  # nothing running: no wait


def test_router_time_per_call_grows_with_the_requests_running() -> None:
    # Calls of no tokens: a request's latency is its calls' overheads.
    requests = [on("large", 0)]
    pools = {"large": PoolSpec(profile({1: 0.01}), 1)}
    config = dict(call_overhead_s=0.01, call_overhead_per_request_s=0.002)
    apart = latencies(SimConfig(requests, pools, TraceTimes((0.0, 1.0)), 5.0, **config))  # type: ignore[arg-type]
    assert apart == pytest.approx([0.012, 0.012], rel=1e-6)
    together = latencies(SimConfig(requests, pools, TraceTimes((0.0, 0.0)), 5.0, **config))  # type: ignore[arg-type]
    assert sorted(together) == pytest.approx([0.012, 0.014], rel=1e-6)
    with pytest.raises(ValueError, match="call_overhead_per_request_s"):
        SimConfig(requests, pools, 1.0, 5.0, call_overhead_per_request_s=-1.0)


def test_in_order_replays_the_requests_as_they_came() -> None:
    requests = [on("large", 1), on("large", 100)]
    pools = {"large": PoolSpec(profile({1: 0.001}), 1)}
    times = TraceTimes((0.0, 1.0, 2.0, 3.0, 4.0))
    result = simulate(SimConfig(requests, pools, times, 10.0, in_order=True))
    assert result.tokens["large"] == 1 + 100 + 1 + 100 + 1

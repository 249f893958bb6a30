"""A saturated replica with ℓ(b) rising: it writes max_concurrency / ℓ(max_concurrency) tokens/s."""

from __future__ import annotations

import math

from glimp_ray.sim import PoolSpec, SimConfig, simulate
from tests.sim.helpers import one_call, profile


def throughput(max_concurrency: int) -> float:
    tokens = 100
    spec = PoolSpec(profile({1: 0.010, 16: 0.040}), 1, max_concurrency=max_concurrency)  # ℓ(b) = 0.010 + 0.002 (b − 1)
    result = simulate(SimConfig([one_call(tokens)], {"large": spec}, 50.0, duration_s=300.0, timeline_step_s=10.0))
    finished = sum(p.requests for p in result.timeline if p.start_s >= 50 and p.end_s <= 300)
    return finished * tokens / 250.0


def test_saturated_throughput_is_b_over_latency_at_b() -> None:
    for b in (1, 4, 8):
        latency = 0.010 + 0.002 * (b - 1)
        assert math.isclose(throughput(b), b / latency, rel_tol=0.03), b


def test_queue_waits_beyond_max_concurrency() -> None:
    spec = PoolSpec(profile({1: 0.010, 16: 0.040}), 1, max_concurrency=4)
    result = simulate(SimConfig([one_call(100)], {"large": spec}, 50.0, duration_s=60.0))
    # Arrivals at 50/s against ~308 tokens/s (3 requests/s): the queue grows and latency with it.
    assert result.p95_s > 10 * 4 * 0.016 * 100

"""GPU-hours and cost: replicas x time x GPUs per replica x price, fixed and autoscaled."""

from __future__ import annotations

import pytest

from glimp_ray.autoscaling import PoolScaling
from glimp_ray.sim import LoadSteps, PoolSpec, SimConfig, simulate
from tests.sim.helpers import one_call, profile


def test_fixed_pools_cost() -> None:
    pools = {
        "small": PoolSpec(profile({1: 0.001}), 2, gpus_per_replica=1, price_per_gpu_hour=1.5),
        "large": PoolSpec(profile({1: 0.002}), 3, gpus_per_replica=2, price_per_gpu_hour=4.0),
    }
    result = simulate(SimConfig([one_call(10)], pools, 1.0, duration_s=1800.0))
    assert result.gpu_hours == pytest.approx({"small": 2 * 0.5 * 1, "large": 3 * 0.5 * 2})
    assert result.cost == pytest.approx({"small": 1.0 * 1.5, "large": 3.0 * 4.0})
    assert result.total_cost == pytest.approx(13.5)


def test_autoscaled_cost_is_the_replica_timeline_integrated() -> None:
    curve = profile({1: 0.010, 16: 0.040}, max_concurrency=16)
    spec = PoolSpec(
        curve,
        1,
        autoscaling=PoolScaling(min_replicas=1, max_replicas=4, profile=curve),
        upscale_delay_s=10,
        downscale_delay_s=30,
        gpus_per_replica=4,
        price_per_gpu_hour=2.5,
    )
    result = simulate(
        SimConfig([one_call(100)], {"large": spec}, LoadSteps(((0, 0.5), (100, 10.0), (300, 0.5))), 600.0)
    )
    points = result.replicas["large"]
    assert max(n for _, n in points) > 1
    held = sum(n * (t1 - t0) for (t0, n), (t1, _) in zip(points, [*points[1:], (600.0, 0)], strict=True))
    assert result.gpu_hours["large"] == pytest.approx(held * 4 / 3600)
    assert result.cost["large"] == pytest.approx(held * 4 / 3600 * 2.5)

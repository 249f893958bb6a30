"""Bad inputs fail early with a clear message; arrivals have the rates they are given."""

from __future__ import annotations

import random

import pytest

from glimp_ray.sim import Diurnal, LoadSteps, Poisson, PoolSpec, SimConfig, TraceTimes, simulate
from tests.sim.helpers import one_call, profile

P = profile({1: 0.001})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SimConfig([one_call(1)], {"large": PoolSpec(P, 1)}, -1.0, 10.0), "arrival rate"),
        (lambda: SimConfig([], {"large": PoolSpec(P, 1)}, 1.0, 10.0), "at least one traced request"),
        (lambda: SimConfig([one_call(1)], {}, 1.0, 10.0), "at least one pool"),
        (lambda: SimConfig([one_call(1)], {"large": PoolSpec(P, 1)}, 1.0, 10.0, warmup_s=10.0), "warmup_s"),
        (lambda: SimConfig([one_call(1)], {"large": PoolSpec(P, 1)}, 1.0, 0.0), "duration_s"),
        (lambda: SimConfig([one_call(1)], {"large": PoolSpec(P, 1)}, "fast", 10.0), "arrivals must be"),  # type: ignore[arg-type]
        (lambda: PoolSpec(P, 0), "replicas >= 1"),
        (lambda: PoolSpec(P, 1, min_replicas=3, max_replicas=2), "min_replicas <= max_replicas"),
        (lambda: PoolSpec(P, 1, price_per_gpu_hour=-1), "price_per_gpu_hour"),
        (lambda: LoadSteps(((5.0, 1.0),)), "starting at 0"),
        (lambda: Diurnal(1.0, amplitude=2.0), "amplitude"),
        (lambda: TraceTimes(()), "at least one time"),
    ],
)
def test_bad_inputs(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_pool_name() -> None:
    pools = {"small": PoolSpec(P, 1), "medium": PoolSpec(P, 1)}
    with pytest.raises(ValueError, match="pools must be 'small' and 'large'"):
        simulate(SimConfig([one_call(1)], pools, 1.0, 10.0))


def test_arrival_rates() -> None:
    rng = random.Random(3)
    assert len(list(Poisson(50.0).times(200.0, rng))) == pytest.approx(10000, rel=0.05)
    steps = list(LoadSteps(((0, 10.0), (100, 40.0))).times(200.0, rng))
    assert sum(t < 100 for t in steps) == pytest.approx(1000, rel=0.1)
    assert sum(t >= 100 for t in steps) == pytest.approx(4000, rel=0.05)
    daily = list(Diurnal(20.0, amplitude=0.5, period_s=1000.0, peak_s=0.0).times(1000.0, rng))
    assert len(daily) == pytest.approx(20000, rel=0.05)
    peak = sum(t < 100 or t >= 900 for t in daily)
    trough = sum(400 <= t < 600 for t in daily)
    assert peak > 2 * trough
    assert list(TraceTimes((5.0, 7.5, 6.0)).times(10.0, rng)) == [0.0, 1.0, 2.5]


def test_same_seed_same_result() -> None:
    config = SimConfig([one_call(20), one_call(200)], {"large": PoolSpec(P, 1)}, 3.0, 100.0, seed=7)
    assert simulate(config).to_dict() | {"wall_s": 0} == simulate(config).to_dict() | {"wall_s": 0}

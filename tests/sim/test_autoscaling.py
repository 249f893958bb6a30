"""The project's autoscaling policy in the loop: a load step adds replicas after Serve's upscale
delay, within the bounds; a fall in load removes them after the downscale delay."""

from __future__ import annotations

from glimp_ray.autoscaling import PoolScaling
from glimp_ray.sim import LoadSteps, PoolSpec, SimConfig, simulate
from tests.sim.helpers import one_call, profile

STEP_AT, UPSCALE_DELAY, DOWNSCALE_DELAY = 200.0, 30.0, 60.0


def run(max_replicas: int, startup_s: float = 0.0):  # type: ignore[no-untyped-def]
    curve = profile({1: 0.010, 16: 0.040}, max_concurrency=16)  # ℓ(b) = 0.010 + 0.002 (b − 1)
    spec = PoolSpec(
        curve,
        1,
        autoscaling=PoolScaling(min_replicas=1, max_replicas=max_replicas, profile=curve, latency_slack=2.0),
        upscale_delay_s=UPSCALE_DELAY,
        downscale_delay_s=DOWNSCALE_DELAY,
        startup_s=startup_s,
        gpus_per_replica=1.0,
        price_per_gpu_hour=1.0,
    )
    # 100 tokens a request: 0.5/s is 50 tokens/s (one replica), 8/s is 800 tokens/s (several).
    arrivals = LoadSteps(((0.0, 0.5), (STEP_AT, 8.0), (STEP_AT + 300, 0.5)))
    return simulate(SimConfig([one_call(100)], {"large": spec}, arrivals, duration_s=900.0, metrics_interval_s=5.0))


def test_load_step_adds_replicas_after_the_delay_and_within_bounds() -> None:
    result = run(max_replicas=3)
    points = result.replicas["large"]
    assert all(n == 1 for t, n in points if t < STEP_AT + UPSCALE_DELAY)
    first_up = next(t for t, n in points if n > 1)
    assert STEP_AT + UPSCALE_DELAY <= first_up <= STEP_AT + UPSCALE_DELAY + 40
    assert max(n for _, n in points) == 3  # wants more than 3; held at max_replicas
    assert min(n for _, n in points) >= 1
    # back down after the load falls, not before the downscale delay
    fall = STEP_AT + 300
    after = [(t, n) for t, n in points if t > fall]
    assert after and after[-1][1] < 3
    assert all(t >= fall + DOWNSCALE_DELAY for t, n in after)


def test_startup_time_delays_service_not_cost() -> None:
    quick, slow = run(max_replicas=3), run(max_replicas=3, startup_s=60.0)
    assert slow.p95_s > quick.p95_s  # calls wait for replicas that are still starting
    assert slow.gpu_hours["large"] >= quick.gpu_hours["large"] * 0.95

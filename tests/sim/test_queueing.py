"""One replica against queueing theory: M/M/1 (one call at a time), M/D/1 processor sharing
(ℓ(b) = c·b: b calls share one server), and perfect batching (flat ℓ: no call waits)."""

from __future__ import annotations

import math
import random

from glimp_ray.sim import PoolSpec, SimConfig, simulate
from tests.sim.helpers import one_call, profile

C = 0.001  # seconds per token of a lone call


def geometric_requests(mean_tokens: float, n: int = 4000, seed: int = 1) -> list:
    rng = random.Random(seed)
    p = 1.0 / mean_tokens
    return [one_call(1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p)), i) for i in range(n)]


def test_mm1_one_call_at_a_time_matches_theory() -> None:
    requests = geometric_requests(200)
    mean_s = sum(r.answer.tokens for r in requests) / len(requests) * C
    rate = 0.6 / mean_s  # ρ = 0.6
    spec = PoolSpec(profile({1: C, 2: C}), 1, max_concurrency=1)
    result = simulate(SimConfig(requests, {"large": spec}, rate, duration_s=20000 * mean_s / 0.6, warmup_s=50 * mean_s))
    # M/M/1 FIFO: the time in system is exponential with rate μ − λ.
    decay = 1.0 / mean_s - rate
    assert math.isclose(result.mean_s, 1.0 / decay, rel_tol=0.08)
    assert math.isclose(result.p50_s, math.log(2) / decay, rel_tol=0.08)
    assert math.isclose(result.p95_s, math.log(20) / decay, rel_tol=0.08)


def test_processor_sharing_with_deterministic_calls() -> None:
    tokens = 100
    service_s = tokens * C
    rate = 0.5 / service_s  # ρ = 0.5
    spec = PoolSpec(profile({1: C, 2: 2 * C, 4: 4 * C}), 1)  # ℓ(b) = c·b: the calls share one server
    result = simulate(SimConfig([one_call(tokens)], {"large": spec}, rate, duration_s=20000 * service_s))
    # M/G/1-PS: mean time in system S / (1 − ρ) = 2 S (FIFO would give 1.5 S, M/D/1).
    assert math.isclose(result.mean_s, service_s / 0.5, rel_tol=0.06)


def test_flat_curve_is_perfect_batching() -> None:
    tokens = 50
    spec = PoolSpec(profile({1: C, 8: C}), 1)
    result = simulate(SimConfig([one_call(tokens)], {"large": spec}, 200.0, duration_s=5.0))
    # Many calls overlap, none slows another: every request takes exactly its own tokens' time.
    assert result.requests > 500
    assert math.isclose(result.p50_s, tokens * C, rel_tol=1e-6)
    assert math.isclose(result.p99_s, tokens * C, rel_tol=1e-6)

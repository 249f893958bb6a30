"""A τ what-if re-routes steps by entropy: a step moved large costs a glimpse on the small pool
and then the step on the large pool; tokens move between pools as predicted."""

from __future__ import annotations

import pytest

from glimp_ray.sim import PoolSpec, SimConfig, simulate
from glimp_ray.sim.workload import SimCall, replay
from tests.sim.helpers import profile, stepped

STEPS = [("small", 0.1, 20), ("large", 0.9, 30), ("small", 0.4, 40), ("large", 1.5, 50)]


def test_replay_as_traced() -> None:
    calls = replay(stepped(STEPS), ["large", "small"], None).calls
    assert calls == (
        SimCall("small", 19, True, 0),
        SimCall("small", 0, True, 0),  # the glimpse that routed step 2
        SimCall("large", 30, False, 20),  # prefills the small step before it
        SimCall("small", 39, True, 30),
        SimCall("small", 0, True, 0),
        SimCall("large", 50, False, 40),
        SimCall("large", 10, False, 0),  # the answer
    )


def test_threshold_moves_steps_by_entropy() -> None:
    low = replay(stepped(STEPS), ["large", "small"], 0.3)  # 0.4 and above go large
    high = replay(stepped(STEPS), ["large", "small"], 1.0)  # only 1.5 goes large
    assert low.tokens("large") == 30 + 40 + 50 + 10
    assert high.tokens("large") == 50 + 10
    # glimpses: one per step on the small pool, whichever way the step went
    assert low.tokens("small") == 20 + 3 and high.tokens("small") == 20 + 30 + 40 + 1


def test_large_only_has_no_glimpse() -> None:
    calls = replay(stepped(STEPS), ["large"], 0.3).calls
    assert all(c.pool == "large" and not c.glimpse for c in calls)
    assert sum(c.tokens for c in calls) == 20 + 30 + 40 + 50 + 10


def test_simulated_tokens_follow_the_threshold() -> None:
    pools = {"small": PoolSpec(profile({1: 0.001, 8: 0.002}), 1), "large": PoolSpec(profile({1: 0.002, 8: 0.004}), 1)}
    totals = {}
    for tau in (0.3, 1.0):
        result = simulate(SimConfig([stepped(STEPS)], pools, 2.0, duration_s=100.0, threshold=tau))
        assert result.unfinished == 0
        totals[tau] = {pool: tokens / result.arrived for pool, tokens in result.tokens.items()}
    assert totals[0.3] == pytest.approx({"small": 19, "large": 130})
    assert totals[1.0] == pytest.approx({"small": 19 + 29 + 39, "large": 60})


def test_a_glimpse_costs_small_pool_time() -> None:
    """With the large pool free and fast, a τ sending every step large still pays each glimpse."""
    pools = {
        "small": PoolSpec(profile({1: 1e-6, 8: 1e-6}, glimpse_s=0.05), 1),
        "large": PoolSpec(profile({1: 1e-6, 8: 1e-6}), 1),
    }
    result = simulate(SimConfig([stepped(STEPS)], pools, 0.5, duration_s=200.0, threshold=0.0))
    assert result.p50_s == pytest.approx(4 * 0.05, rel=0.01)

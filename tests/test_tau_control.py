"""Online τ control on synthetic entropy and wait streams."""

from __future__ import annotations

import random

import pytest

from glimp_ray.eval.metrics import quantile_threshold
from glimp_ray.policies import routes_large
from glimp_ray.tau_control import OverloadControl, TauControl, TauController


def route_stream(controller: TauController, entropies: list[float]) -> list[bool]:
    """Route each step on the τ of the moment, then let the controller see its entropy."""
    routed = []
    for entropy in entropies:
        routed.append(routes_large(entropy, controller.tau))
        controller.observe_entropy(entropy)
    return routed


@pytest.mark.parametrize("target", [0.1, 0.25, 0.5])
def test_target_share_holds_through_a_shift_in_difficulty(target: float) -> None:
    rng = random.Random(7)
    easy = [rng.lognormvariate(-1.0, 0.8) for _ in range(4000)]
    hard = [rng.lognormvariate(0.0, 0.5) for _ in range(4000)]  # harder traffic: higher entropies
    controller = TauController(threshold=1.0, control=TauControl(target_large_fraction=target, window=512))
    routed = route_stream(controller, easy + hard)
    # After a window to learn (and again after the shift), the share is within 2 points.
    for settled in (routed[1000:4000], routed[5000:8000]):
        assert sum(settled) / len(settled) == pytest.approx(target, abs=0.02)
    # A fixed τ would not hold it: the same streams at the τ learnt on the easy traffic.
    tau_easy = quantile_threshold(easy, target)
    fixed = sum(routes_large(e, tau_easy) for e in hard) / len(hard)
    assert fixed > target + 0.2


def test_configured_tau_stands_until_enough_samples() -> None:
    controller = TauController(0.7, TauControl(target_large_fraction=0.2, window=64, min_samples=32))
    route_stream(controller, [3.0] * 31)
    assert controller.tau == 0.7
    controller.observe_entropy(3.0)
    assert controller.tau == 3.0


def test_overload_raises_tau_within_bounds_and_recovers() -> None:
    overload = OverloadControl(max_token_s=0.5, tau_max=1.6, raise_step=0.25, fall_step=0.1, window=4)
    controller = TauController(1.0, TauControl(overload=overload))
    taus = []
    for _ in range(6):  # saturated: every large call takes 2 s per token
        for _ in range(4):
            controller.observe_large_call(2.0)
        taus.append(controller.tau)
    assert taus == pytest.approx([1.25, 1.5, 1.6, 1.6, 1.6, 1.6])  # capped at tau_max
    for _ in range(3):  # between half the bound and the bound: hold
        for _ in range(4):
            controller.observe_large_call(0.3)
    assert controller.tau == pytest.approx(1.6)
    for _ in range(10):  # quiet again: back to the configured τ, no lower
        for _ in range(4):
            controller.observe_large_call(0.01)
    assert controller.tau == pytest.approx(1.0)


def test_a_raised_tau_falls_back_when_few_steps_go_large() -> None:
    # With τ raised almost nothing goes large, so a window of large calls never fills: the steps
    # themselves (any route) bring the decision, and with no slow large call τ falls back.
    overload = OverloadControl(max_token_s=0.05, tau_max=3.0, raise_step=1.0, fall_step=0.5, window=4)
    controller = TauController(0.5, TauControl(overload=overload))
    for _ in range(4):
        controller.observe_large_call(0.2)
    assert controller.tau == pytest.approx(1.5)
    for _ in range(4 * 4 - 1):
        controller.observe_entropy(0.1)  # small steps only
    assert controller.tau == pytest.approx(1.5)
    controller.observe_entropy(0.1)
    assert controller.tau == pytest.approx(1.0)
    controller.observe_large_call(0.2)  # two slow large calls in the next stretch of steps:
    controller.observe_large_call(0.2)
    for _ in range(16):
        controller.observe_entropy(0.1)
    assert controller.tau == pytest.approx(2.0)  # their median is over the bound: raise
    for _ in range(64):
        controller.observe_entropy(0.1)
    assert controller.tau == pytest.approx(0.5)  # quiet: back to the configured τ, no lower


def test_overload_and_target_share_compose() -> None:
    overload = OverloadControl(max_token_s=0.5, tau_max=2.0, raise_step=0.5, window=1)
    controller = TauController(1.0, TauControl(target_large_fraction=0.5, window=8, min_samples=8, overload=overload))
    route_stream(controller, [0.2, 0.4, 0.6, 0.8] * 2)
    base = controller.tau
    assert base == pytest.approx(0.5)  # the median of the window
    controller.observe_large_call(5.0)
    assert controller.tau == pytest.approx(1.0)  # shed on top of the target-share τ
    controller.reset(0.3)
    assert controller.tau == 0.3


def test_bad_control_settings() -> None:
    with pytest.raises(ValueError, match="target_large_fraction"):
        TauControl(target_large_fraction=1.5)
    with pytest.raises(ValueError, match="min_samples"):
        TauControl(window=8, min_samples=16)
    with pytest.raises(ValueError, match="below tau_min"):
        TauControl(tau_min=1.0, overload=OverloadControl(max_token_s=1.0, tau_max=0.5))
    with pytest.raises(ValueError, match="positive"):
        OverloadControl(max_token_s=0.0, tau_max=1.0)


def test_the_loop_routes_each_step_on_the_tau_of_the_moment() -> None:
    import asyncio

    from glimp_ray.collab import Collaborator, CollabParams
    from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep

    script = [ScriptedStep("a\n\n", 0.5), ScriptedStep("b\n\n", 0.5), ScriptedStep("", 0.1, "think_end")]
    large = [ScriptedStep("A\n\n"), ScriptedStep("B\n\n"), ScriptedStep("", 0.0, "think_end")]
    for mode in ("fused", "paper"):
        collab = Collaborator(
            ScriptedEngine("small", script, answer="x"),
            ScriptedEngine("large", large, answer="y"),
            CollabParams(threshold=0.3, mode=mode),
        )
        taus = iter([0.3, 0.7, 0.7])  # the controller moves τ between the first and second step
        collab.tau = taus.__next__
        result = asyncio.run(collab.run(prompt="q"))
        assert [s.model for s in result.steps] == ["large", "small", "small"]
        assert [s.threshold for s in result.steps] == [0.3, 0.7, 0.7]
        # A request's own threshold wins over the router's τ.
        fixed = asyncio.run(collab.run(prompt="q", threshold=0.3))
        assert [s.threshold for s in fixed.steps] == [0.3, 0.3, 0.3]

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from glimp_ray.engine.base import NonFiniteSignalError
from glimp_ray.policies import (
    LARGE,
    POLICY_NAMES,
    SMALL,
    SignalPolicy,
    engine_threshold,
    glimpse_routes_large,
    make_policy,
)
from glimp_ray.types import GlimpseSignals, GlimpseSpec


def glimpse(entropy: float = 0.5, top1: float = 0.6, top2: float = 0.3) -> GlimpseSignals:
    return GlimpseSignals(entropy, top1, top2)


def test_entropy_policy_routes_strictly_above_threshold() -> None:
    policy = make_policy("entropy", threshold=1.0)
    rng = random.Random(0)
    assert policy.needs_glimpse and policy.signal == "entropy"
    assert policy(glimpse(entropy=0.3), rng) == SMALL
    assert policy(glimpse(entropy=1.0), rng) == SMALL  # at most τ stays small
    assert policy(glimpse(entropy=1.0001), rng) == LARGE
    assert make_policy("entropy", threshold=1.0, at_threshold=True)(glimpse(entropy=1.0), rng) == LARGE
    with pytest.raises(ValueError, match="needs the glimpse"):
        SignalPolicy("entropy", 1.0)(None, rng)


def test_top1_policy_routes_large_below_its_threshold() -> None:
    """The first token's probability below τ goes large; the entropy plays no part."""
    policy = make_policy("top1", threshold=0.5)
    rng = random.Random(0)
    assert policy.needs_glimpse and policy.signal == "top1"
    assert policy(glimpse(entropy=9.0, top1=0.9, top2=0.05), rng) == SMALL
    assert policy(glimpse(entropy=0.0, top1=0.4, top2=0.3), rng) == LARGE
    assert policy(glimpse(top1=0.5, top2=0.1), rng) == SMALL  # at τ stays small
    assert make_policy("top1", threshold=0.5, at_threshold=True)(glimpse(top1=0.5, top2=0.1), rng) == LARGE


def test_margin_policy_routes_large_when_the_top_two_are_close() -> None:
    """Top-1 minus top-2 below τ goes large: the same top-1 probability routes either way."""
    policy = make_policy("margin", threshold=0.2)
    rng = random.Random(0)
    assert policy.signal == "margin"
    assert policy(glimpse(top1=0.5, top2=0.45), rng) == LARGE  # margin 0.05
    assert policy(glimpse(top1=0.5, top2=0.1), rng) == SMALL  # margin 0.4
    assert policy(glimpse(top1=0.9, top2=0.7), rng) == SMALL  # margin exactly 0.2 (in binary, just above)
    assert glimpse(top1=0.5, top2=0.45).margin == pytest.approx(0.05)


@pytest.mark.parametrize("name", ["entropy", "top1", "margin"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_signal_is_an_engine_error_not_a_route(name: str, bad: float) -> None:
    signals = {
        "entropy": glimpse(entropy=bad),
        "top1": glimpse(top1=bad),
        "margin": glimpse(top2=bad),
    }[name]
    with pytest.raises(NonFiniteSignalError, match=name):
        make_policy(name, threshold=0.5)(signals, random.Random(0))
    with pytest.raises(NonFiniteSignalError):
        glimpse_routes_large(signals, GlimpseSpec(threshold=0.5, signal=name))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["entropy", "top1", "margin"])
@pytest.mark.parametrize("at_threshold", [False, True])
def test_a_fused_glimpse_routes_as_the_policy_does(name: str, at_threshold: bool) -> None:
    """The engine's strict rule on :func:`engine_threshold`'s τ decides every signal as the policy
    does, values exactly at τ included."""
    tau = 0.25
    policy = make_policy(name, threshold=tau, at_threshold=at_threshold)
    spec = GlimpseSpec(threshold=engine_threshold(tau, at_threshold, policy.signal), signal=policy.signal)  # type: ignore[arg-type]
    rng = random.Random(0)
    values = [0.0, 0.1, math.nextafter(tau, 0), tau, math.nextafter(tau, 1), 0.4, 0.9]
    for value in values:
        signals = {
            "entropy": glimpse(entropy=value),
            "top1": glimpse(top1=value, top2=0.0),
            "margin": glimpse(top1=value, top2=0.0),
        }[name]
        assert glimpse_routes_large(signals, spec) == (policy(signals, rng) == LARGE), (name, value)


def test_fixed_policies_ignore_the_glimpse() -> None:
    rng = random.Random(0)
    assert make_policy("small")(glimpse(entropy=99.0), rng) == SMALL
    assert make_policy("large")(glimpse(entropy=0.0), rng) == LARGE
    assert not make_policy("small").needs_glimpse and make_policy("small").signal is None


def test_random_policy_is_seeded_and_has_its_rate() -> None:
    policy = make_policy("random", random_p=0.3)
    first = [policy(None, r) for r in [random.Random(5)] for _ in range(2000)]
    again = [policy(None, r) for r in [random.Random(5)] for _ in range(2000)]
    assert first == again
    assert 0.27 < first.count(LARGE) / len(first) < 0.33


def test_every_named_policy_is_built_by_make_policy() -> None:
    pre = {"entropy", "top1", "margin", "small", "large", "random"}
    post = {"h_step", "ppl_step", "min_prob", "cue", "verify"}
    assert set(POLICY_NAMES) == pre | post
    for name in POLICY_NAMES:
        policy = make_policy(name)
        assert policy.needs_glimpse == (name in ("entropy", "top1", "margin"))
        assert policy.post_step == (name in post)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"name": "nope"}, "unknown policy"), ({"name": "random", "random_p": 1.5}, "random_p")],
)
def test_bad_policies_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_policy(**kwargs)  # type: ignore[arg-type]


# The loop routes on the policy's signal, alike in every mode: the engine's fused glimpse (one
# call per step, or a run of easy steps) and the paper mode's separate glimpse.
TOP1 = [0.9, 0.3, 0.7, 0.45, 0.95]  # the glimpse's top-1 probability of each scripted step
TOP2 = [0.05, 0.25, 0.65, 0.1, 0.01]  # margins 0.85, 0.05, 0.05, 0.35, 0.94


def _scripted(n: int = 5) -> tuple[Any, Any]:
    from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep

    steps = [ScriptedStep(f"s{i}\n\n", 0.1, "delimiter", TOP1[i], TOP2[i]) for i in range(n - 1)]
    small = ScriptedEngine("small", [*steps, ScriptedStep(f"s{n - 1}", 0.1, "think_end", TOP1[-1], TOP2[-1])])
    large = ScriptedEngine(
        "large", [*(ScriptedStep(f"L{i}\n\n") for i in range(n - 1)), ScriptedStep(f"L{n - 1}", 0, "think_end")]
    )
    return small, large


@pytest.mark.parametrize(
    ("policy", "threshold", "routes"),
    [
        ("top1", 0.5, ["small", "large", "small", "large", "small"]),
        ("top1", 0.45, ["small", "large", "small", "small", "small"]),  # 0.45 at τ stays small
        ("margin", 0.1, ["small", "large", "large", "small", "small"]),
    ],
)
@pytest.mark.parametrize(("mode", "streaming"), [("fused", True), ("fused", False), ("paper", False)])
def test_the_loop_routes_on_the_policys_signal(
    policy: str, threshold: float, routes: list[str], mode: str, streaming: bool
) -> None:
    from glimp_ray.collab import Collaborator, CollabParams

    small, large = _scripted()
    params = CollabParams(policy=policy, threshold=threshold, mode=mode, streaming_glimpse=streaming)  # type: ignore[arg-type]
    result = asyncio.run(Collaborator(small, large, params).run([{"role": "user", "content": "q"}]))
    assert [s.model for s in result.steps] == routes
    assert all(s.threshold == threshold for s in result.steps)  # the τ each step was routed on
    glimpses = [c.glimpse for c in small.calls if c.glimpse is not None]
    assert glimpses and all(g.signal == policy for g in glimpses)


def test_the_reference_rule_sends_a_signal_at_threshold_large_through_the_engine() -> None:
    """Preset reference (``>=`` τ): a top-1 probability equal to τ goes large, fused or not."""
    from glimp_ray.collab import Collaborator, CollabParams

    for mode in ("fused", "paper"):
        small, large = _scripted()
        params = CollabParams(preset="reference", entropy="topk", policy="top1", threshold=0.45, mode=mode)  # type: ignore[arg-type]
        result = asyncio.run(Collaborator(small, large, params).run([{"role": "user", "content": "q"}]))
        assert [s.model for s in result.steps][:4] == ["small", "large", "small", "large"], mode


def test_a_nan_glimpse_fails_the_request_instead_of_routing_small() -> None:
    from glimp_ray.collab import Collaborator, CollabParams
    from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep

    for mode in ("fused", "paper"):
        small = ScriptedEngine("small", [ScriptedStep("s\n\n", math.nan)])
        large = ScriptedEngine("large", [ScriptedStep("L\n\n")])
        with pytest.raises(NonFiniteSignalError):
            asyncio.run(Collaborator(small, large, CollabParams(mode=mode)).run([{"role": "user", "content": "q"}]))  # type: ignore[arg-type]

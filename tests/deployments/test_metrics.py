"""The one routing-ratio meter: what the ratio gauge and the autoscaler read (pure, no Ray)."""

from __future__ import annotations

import pytest

from glimp_ray.collab import StepRecord
from glimp_ray.meters import DemandMeter, served_by


def record(model: str, tokens: int, index: int = 0, fell_back: bool = False) -> StepRecord:
    return StepRecord(index, model, "x", 0.5, tokens, "delimiter", 0.1, fell_back=fell_back)  # type: ignore[arg-type]


def test_ratio_by_steps_and_by_tokens_over_a_sliding_window() -> None:
    meter = DemandMeter(window_s=10, start=0.0)
    assert meter.load(0.0).step_share == {} and meter.load(0.0).token_share == {}
    for t, (model, tokens) in enumerate([("small", 10), ("large", 30), ("small", 10), ("small", 50)]):
        meter.observe(float(t), record(model, tokens))
    load = meter.load(4.0)
    assert load.step_share["large"] == 0.25 and load.token_share["large"] == 0.3
    meter.observe(10.5, record("large", 10))  # the first step (t=0) leaves the window
    load = meter.load(10.5)
    assert load.step_share == pytest.approx({"small": 0.5, "large": 0.5})
    assert load.token_share["large"] == pytest.approx(40 / 100)


def test_answers_count_as_load_but_not_as_routed_steps() -> None:
    meter = DemandMeter(window_s=10, start=0.0)
    meter.observe(0.0, record("small", 20))
    meter.observe(0.0, record("large", 20, index=-1), finished_tokens=40)  # the answer
    load = meter.load(1.0)
    assert load.step_share == {"small": 1.0}  # the routing ratio is over thinking steps
    assert load.token_share == pytest.approx({"small": 0.5, "large": 0.5})  # both pools worked
    assert load.tokens_per_request == 40


def test_a_fallback_step_is_the_small_pools_load() -> None:
    fallback = record("large", 30, fell_back=True)
    assert served_by(fallback) == "small" and served_by(record("large", 30)) == "large"
    meter = DemandMeter(window_s=10, start=0.0)
    meter.observe(0.0, fallback)
    assert meter.load(1.0).step_share == {"small": 1.0}

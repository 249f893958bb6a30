"""The routing window behind the ratio gauge (pure, no Ray)."""

from __future__ import annotations

from deployments.metrics import RoutingWindow
from glimp_ray.collab import StepRecord


def record(model: str, tokens: int) -> StepRecord:
    return StepRecord(0, model, "x", 0.5, tokens, "delimiter", 0.1)  # type: ignore[arg-type]


def test_ratio_by_steps_and_by_tokens_over_a_sliding_window() -> None:
    window = RoutingWindow(size=4)
    assert window.large_fraction_by_steps() == 0.0 and window.large_fraction_by_tokens() == 0.0
    for model, tokens in [("small", 10), ("large", 30), ("small", 10), ("small", 50)]:
        window.add(record(model, tokens))
    assert window.large_fraction_by_steps() == 0.25
    assert window.large_fraction_by_tokens() == 0.3
    window.add(record("large", 10))  # the first step leaves the window
    assert window.large_fraction_by_steps() == 0.5
    assert window.large_fraction_by_tokens() == 40 / 100

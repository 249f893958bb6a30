"""Calibration and capacity planning against hand computations on a synthetic trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from glimp_ray.planner import calibrate, format_plan, plan, plot_plan, requests_from_spans


def span(name: str, span_id: str, parent: str | None, **attributes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "span_id": span_id,
        "parent_span_id": parent,
        "trace_id": span_id,
        "attributes": {f"glimp.{k}": v for k, v in attributes.items()},
    }


def step(parent: str, i: int, route: str, entropy: float, tokens: int, model_s: float, glimpse_s: float = 0.0) -> Any:
    return span(
        "glimp.step",
        f"{parent}-{i}",
        parent,
        **{
            "step.index": i,
            "route": route,
            "entropy": entropy,
            "tokens.generated": tokens,
            "model_s": model_s,
            "glimpse_s": glimpse_s,
        },
    )


def answer(parent: str, tokens: int, model_s: float) -> Any:
    return span(
        "glimp.answer", f"{parent}-a", parent, **{"route": "large", "tokens.generated": tokens, "model_s": model_s}
    )


# Small: 30 tokens in 0.30 s (0.01 s/token). Large: 30 tokens in 0.60 s (0.02 s/token).
SPANS = [
    span("glimp.request", "r1", None, latency_s=0.7),
    step("r1", 0, "small", 0.5, 10, 0.10),
    step("r1", 1, "large", 2.0, 20, 0.40, glimpse_s=0.01),
    answer("r1", 5, 0.10),
    span("glimp.request", "r2", None, latency_s=0.4),
    step("r2", 0, "small", 0.8, 10, 0.10),
    step("r2", 1, "small", 0.2, 10, 0.10),
    answer("r2", 5, 0.10),
]


def test_calibrate_returns_the_exact_quantile() -> None:
    requests = requests_from_spans(SPANS)
    report = calibrate(requests, 0.25, validation=requests)
    # Sorted entropies 0.2 0.5 0.8 2.0; the 75th percentile is 0.8 + 0.25 * 1.2.
    assert report["threshold"] == pytest.approx(1.1)
    assert report["predicted_large_fraction"] == 0.25
    assert report["validation"]["observed_large_fraction"] == 0.25
    synthetic = (
        [span("glimp.request", "r", None, latency_s=1.0)]
        + [step("r", i, "small", i / 10, 1, 0.01) for i in range(100)]
        + [answer("r", 1, 0.01)]
    )
    tau = calibrate(requests_from_spans(synthetic), 0.3)["threshold"]
    assert sum(i / 10 > tau for i in range(100)) == 30


def test_plan_matches_a_hand_computation() -> None:
    report = plan(requests_from_spans(SPANS), rps=10, thresholds=[0.6], target_utilization=0.5)
    assert report["service_rate_tokens_per_s"] == {"small": pytest.approx(100), "large": pytest.approx(50)}
    assert report["glimpse_s"] == pytest.approx(0.01)
    traced, what_if = report["plans"]
    # Small: (10*0.01 + 0.01 glimpse) + (20*0.01) = 0.31 s over 2 requests; large: (0.4 + 0.1) + 0.1 = 0.6 s.
    assert traced["small_work_s"] == pytest.approx(0.155) and traced["large_work_s"] == pytest.approx(0.3)
    assert traced["large_step_fraction"] == 0.25 and traced["large_token_fraction"] == pytest.approx(0.5)
    # 10 req/s: 1.55 and 3.0 busy replicas at 50% utilization -> 4 and 6 replicas.
    assert (traced["small_replicas"], traced["large_replicas"]) == (4, 6)
    # p95 of [0.4, 0.7] is 0.685; busiest pool at 0.5 utilization doubles it.
    assert traced["predicted_p95_s"] == pytest.approx(1.37)
    # τ = 0.6 re-routes r2's 0.8 step to the large model.
    assert what_if["large_step_fraction"] == 0.5
    assert what_if["small_work_s"] == pytest.approx(0.11) and what_if["large_work_s"] == pytest.approx(0.4)
    assert (what_if["small_replicas"], what_if["large_replicas"]) == (3, 8)


def test_plan_adds_replicas_for_a_latency_objective() -> None:
    report = plan(requests_from_spans(SPANS), rps=10, target_utilization=0.5, slo_p95_s=1.0)
    traced = report["plans"][0]
    assert (traced["small_replicas"], traced["large_replicas"]) == (5, 10)
    assert traced["predicted_p95_s"] <= 1.0
    with pytest.raises(ValueError, match="below the unloaded p95"):
        plan(requests_from_spans(SPANS), rps=10, slo_p95_s=0.5)


def test_abandoned_requests_are_left_out() -> None:
    abandoned = [span("glimp.request", "r3", None), step("r3", 0, "large", 3.0, 50, 5.0)]
    assert len(requests_from_spans(SPANS + abandoned)) == 2


def test_plan_outputs(tmp_path: Path) -> None:
    report = plan(requests_from_spans(SPANS), rps=5, thresholds=[0.3, 0.6, 1.5])
    table = format_plan(report)
    assert "| traced |" in table and "| 0.600 |" in table
    path = tmp_path / "plan.png"
    plot_plan(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_traces() -> None:
    with pytest.raises(ValueError, match="no finished glimp.request spans"):
        requests_from_spans([])
    no_entropy = [
        span("glimp.request", "r", None, latency_s=1.0),
        step("r", 0, "large", None, 3, 0.1),  # type: ignore[arg-type]
        answer("r", 1, 0.01),
    ]
    with pytest.raises(ValueError, match="no glimpse entropies"):
        calibrate(requests_from_spans(no_entropy), 0.2)
    with pytest.raises(ValueError, match="rps"):
        plan(requests_from_spans(SPANS), rps=0)


def test_cli_calibrate_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from glimp_ray.cli import main

    traces = tmp_path / "spans.jsonl"
    traces.write_text("".join(json.dumps(s) + "\n" for s in SPANS))
    assert main(["calibrate", "--traces", str(traces), "--target-large-fraction", "0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == pytest.approx(1.1)
    out = tmp_path / "plan"
    assert (
        main(
            [
                "plan",
                "--traces",
                str(traces),
                "--rps",
                "10",
                "--utilization",
                "0.5",
                "--threshold",
                "0.6",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| traced |" in printed and "| 0.600 |" in printed
    assert json.loads((out / "plan.json").read_text())["plans"][1]["large_replicas"] == 8
    assert (out / "plan.png").is_file()
    assert main(["plan", "--traces", str(tmp_path / "none.jsonl"), "--rps", "1"]) == 2
    assert "trace file not found" in capsys.readouterr().err

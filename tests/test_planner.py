"""Calibration and capacity planning against hand computations on a synthetic trace."""

from __future__ import annotations

import math
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
    # No span times: every call counts as a lone one, so the curves are flat: 0.01 s/token small,
    # 0.02 s/token large; the latency target is twice that, met at any concurrency (max 8).
    spans = [dict(s) for s in SPANS]
    spans[2] = step("r1", 1, "large", 2.0, 20, 0.40, glimpse_s=0.05)
    spans[2]["attributes"]["glimp.glimpse.model_s"] = 0.005
    report = plan(requests_from_spans(spans), rps=10, thresholds=[0.6], max_concurrency=8)
    assert report["curves"]["small"] == {"base_s": pytest.approx(0.01), "slope_s": 0.0, "source": "traces"}
    assert report["curves"]["large"] == {"base_s": pytest.approx(0.02), "slope_s": 0.0, "source": "traces"}
    assert report["glimpse_model_s"] == pytest.approx(0.005)  # the model time, not the 50 ms wall clock
    traced, what_if = report["plans"]
    # Small: r1 10 tokens + 1 glimpse, r2 20 tokens -> 15.5 per request; large: (20 + 5) + 5 -> 15.
    assert traced["small_tokens"] == pytest.approx(15.5) and traced["large_tokens"] == pytest.approx(15)
    assert traced["large_step_fraction"] == 0.25 and traced["large_token_fraction"] == pytest.approx(0.5)
    # 10 req/s: 155 tokens/s at 800 tokens/s per small replica (8 calls at 10 ms), 150 at 400: 1 each.
    assert (traced["small_replicas"], traced["large_replicas"]) == (1, 1)
    # Little's law: 155 tokens/s x 0.01 s/token = 1.55 calls running; 150 x 0.02 = 3.
    assert traced["small_concurrency"] == pytest.approx(1.55) and traced["large_concurrency"] == pytest.approx(3.0)
    assert traced["large_utilization"] == pytest.approx(3.0 / 8)
    # Flat curves: the traced model times stand, plus the median overhead outside the models:
    # r1 0.7 - 0.605 = 0.095 s, r2 0.4 - 0.3 = 0.1 s -> 0.0975 s; p95 of [0.3975, 0.7025].
    assert report["overhead_s"] == pytest.approx(0.0975)
    assert traced["predicted_p95_s"] == pytest.approx(0.3975 + 0.95 * 0.305)
    # τ = 0.6 re-routes r2's 0.8 step to the large model, with the trace's mean glimpse.
    assert what_if["large_step_fraction"] == 0.5
    assert what_if["small_tokens"] == pytest.approx(11) and what_if["large_tokens"] == pytest.approx(20)


def batched_trace() -> list[dict[str, Any]]:
    """Five answer-only requests of 100 tokens on one large replica: four ran together in 1.6 s
    (16 ms per token at 4 calls), one alone in 1 s (10 ms): ℓ(b) = 10 ms + 2 ms x (b - 1)."""
    spans = []
    for i, (start, seconds) in enumerate([(10.0, 1.6)] * 4 + [(20.0, 1.0)]):
        root = span("glimp.request", f"r{i}", None, latency_s=seconds + 0.05)
        call = answer(f"r{i}", 100, seconds)
        call["attributes"]["glimp.replica"] = "L1"
        call["end_time_unix_nano"] = int((start + seconds) * 1e9)
        spans += [root, call]
    return spans


def test_batched_calls_are_not_summed_as_serial() -> None:
    report = plan(requests_from_spans(batched_trace()), rps=2, max_concurrency=32)
    assert report["curves"]["large"]["base_s"] == pytest.approx(0.01)
    assert report["curves"]["large"]["slope_s"] == pytest.approx(0.002)
    traced = report["plans"][0]
    # 200 tokens/s, target 20 ms per token. Calls at random see the mean b others: on one replica
    # b = 200 x (0.01 + 0.002 b) -> b = 2 / 0.6 = 3.33 calls, 16.7 ms per token: one replica,
    # where serial sums (1.48 model-seconds per request at 2/s) would have asked for 3 to 5.
    assert traced["large_replicas"] == 1
    assert traced["large_concurrency"] == pytest.approx(10 / 3)
    # 100 tokens at 16.7 ms + 50 ms.
    assert traced["predicted_p95_s"] == pytest.approx(0.05 + 100 * (0.01 + 0.002 * 10 / 3))
    assert plan(requests_from_spans(batched_trace()), rps=4)["plans"][0]["large_replicas"] == 2
    # 600 tokens/s: 2 replicas would each run the 6 calls that meet 20 ms if each ran exactly 6,
    # but a call arriving at random there sees b = 3 / 0.4 = 7.5 others: 25 ms. 3 replicas: b =
    # 3.33, 16.7 ms (the autoscaler's rule).
    assert plan(requests_from_spans(batched_trace()), rps=6)["plans"][0]["large_replicas"] == 3


def test_plan_adds_replicas_for_a_latency_objective() -> None:
    requests = requests_from_spans(batched_trace())
    traced = plan(requests, rps=2, slo_p95_s=1.2)["plans"][0]
    # 1.2 s leaves 11.5 ms per token: 3 replicas give 12.04 ms (b = 0.77), 4 give 11.1 ms
    # (50 tokens/s each: b = 0.5 / 0.9 = 0.56).
    assert traced["large_replicas"] == 4
    assert traced["predicted_p95_s"] == pytest.approx(0.05 + 100 * (0.01 + 0.002 * 5 / 9))
    with pytest.raises(ValueError, match="below what more replicas reach"):
        plan(requests, rps=2, slo_p95_s=1.0)  # a lone call takes 1.05 s


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
                "--max-concurrency",
                "2",
                "--threshold",
                "0.6",
                "--out",
                str(out),
                "--no-simulate",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| traced |" in printed and "| 0.600 |" in printed
    # τ 0.6: 200 large tokens/s at 20 ms are 4 calls running. At most 2 per replica, 2 replicas
    # would fill every slot; a call arriving at random finds both of its replica's taken with
    # probability 1 - e^-b (1 + b) at b calls per replica, at most 5% for b <= 0.355: 12 replicas.
    assert json.loads((out / "plan.json").read_text())["plans"][1]["large_replicas"] == 12
    assert (out / "plan.png").is_file()
    assert main(["plan", "--traces", str(tmp_path / "none.jsonl"), "--rps", "1"]) == 2
    assert "trace file not found" in capsys.readouterr().err


def test_concurrency_is_measured_per_replica_from_overlapping_calls() -> None:
    spans = []
    for name, replica, start, end in [("a", "L1", 0.0, 2.0), ("b", "L1", 1.0, 2.0), ("c", "L2", 0.0, 1.0)]:
        call = answer(name, 10, end - start)
        call["attributes"]["glimp.replica"] = replica
        call["end_time_unix_nano"] = int(end * 1e9)
        spans += [span("glimp.request", name, None, latency_s=end - start), call]
    concurrency = {r.trace_id: r.answer.concurrency for r in requests_from_spans(spans)}
    # a: 2 s of itself + 1 s of b over its 2 s; b: all of its 1 s overlaps a; c ran alone on L2.
    assert concurrency == {"a": pytest.approx(1.5), "b": pytest.approx(2.0), "c": 1.0}


def flat_profile(
    seconds_per_token: float, cap: int = 8, kv_budget_tokens: int = 1 << 30, glimpse_s: float = 0.005
) -> Any:
    from glimp_ray.profile import EngineProfile

    return EngineProfile(
        model=f"flat-{seconds_per_token}",
        engine="hf",
        dtype="float32",
        accelerator="cpu:test",
        decode_s={1: seconds_per_token, cap: seconds_per_token},
        prefill_s_per_token=0.0,
        glimpse_s=glimpse_s,
        kv_bytes_per_token=1,
        kv_budget_bytes=kv_budget_tokens,
        max_concurrency=cap,
    )


def made_up_requests(n: int = 20, cold: int = 0) -> list[Any]:
    """``n`` requests a second apart: two small steps of 10 tokens (10 ms each), one large step of
    20 (20 ms each) and a 5-token large answer, 0.1 s outside the models; the first ``cold`` ones
    took ten times as long in the models."""
    from glimp_ray.traces import TracedCall, TracedRequest

    requests = []
    for i in range(n):
        slow = 10.0 if i < cold else 1.0
        calls = (
            TracedCall("small", 0.2, 10, 0.1 * slow),
            TracedCall("small", 0.4, 10, 0.1 * slow),
            TracedCall("large", 2.0, 20, 0.4 * slow, glimpse_model_s=0.005),
        )
        answer = TracedCall("large", None, 5, 0.1 * slow)
        model_s = sum(c.model_s + c.glimpse_model_s for c in (*calls, answer))
        requests.append(TracedRequest(f"r{i}", calls, answer, 0.1 + model_s, start_s=float(i), end_s=i + 1.0))
    return requests


def test_overload_is_flagged_before_every_batch_slot_is_taken() -> None:
    from glimp_ray.plan_model import Analytic, PoolModel, Workload, full_batch_probability

    # A lone arrival finds its replica busy with probability 1 - e^-b when b calls run on average.
    assert full_batch_probability(1.0, 1) == pytest.approx(1 - math.exp(-1))
    requests = made_up_requests()
    # Large: 25 tokens a request at 24 requests/s = 600 tokens/s at 10 ms: b = 6 calls on one
    # replica, 75% of its 8 slots, yet P(Poisson(6) >= 8) = 26% of calls would find it full.
    workload = Workload.at(requests, 24.0, None, 0.1)
    pools = {"small": PoolModel.of(flat_profile(0.01), workload), "large": PoolModel.of(flat_profile(0.01), workload)}
    evaluate = Analytic(workload, pools)
    one = evaluate({"small": 5, "large": 1})
    assert one.concurrency["large"] == pytest.approx(6.0)
    assert one.full_batch["large"] == pytest.approx(1 - sum(math.exp(-6) * 6**k / math.factorial(k) for k in range(8)))
    assert one.overloaded == ["large"] and one.p95_s == math.inf
    # Two replicas: b = 3, P(Poisson(3) >= 8) = 1.2%: not overloaded; the fewest that are not.
    assert evaluate({"small": 5, "large": 2}).p95_s < math.inf
    assert evaluate.low()["large"] == 2


def test_kv_limited_concurrency_caps_the_batch() -> None:
    from glimp_ray.plan_model import PoolModel, Workload

    requests = made_up_requests()
    workload = Workload.at(requests, 4.0, None, 0.1)
    assert workload.context_tokens == 45  # 10 + 10 + 20 + 5 tokens a request
    tight = flat_profile(0.02, cap=32, kv_budget_tokens=45 * 3)  # the KV holds three such requests
    assert PoolModel.of(tight, workload).concurrency_cap == 3
    roomy = plan(
        requests, 60.0, slo_p95_s=2.0, profiles={"small": flat_profile(0.01, 32), "large": flat_profile(0.02, 32)}
    )
    capped = plan(requests, 60.0, slo_p95_s=2.0, profiles={"small": flat_profile(0.01, 32), "large": tight})
    assert capped["max_concurrency"]["large"] == 3 and roomy["max_concurrency"]["large"] == 32
    assert capped["plans"][0]["large_replicas"] > roomy["plans"][0]["large_replicas"]


def test_profiles_are_the_curves_source() -> None:
    requests = made_up_requests()
    profiles = {"small": flat_profile(0.01, glimpse_s=0.002), "large": flat_profile(0.03)}
    report = plan(requests, 1.0, profiles=profiles)
    assert report["curves"]["large"]["source"] == "flat-0.03" and report["glimpse_model_s"] == pytest.approx(0.002)
    traced = report["plans"][0]
    # Flat profiles, calls as the simulator runs them: each small step is a 2 ms glimpse (its first
    # token) and 9 tokens x 10 ms; the large step a glimpse on the small pool, then 20 tokens x
    # 30 ms; the answer 5 x 30 ms; 0.1 s outside the models.
    assert traced["predicted_p95_s"] == pytest.approx(0.1 + 2 * (0.002 + 0.09) + 0.002 + 0.6 + 0.15)


def test_planned_counts_are_the_fewest_the_confirmation_accepts() -> None:
    from glimp_ray.plan_model import Analytic

    requests = made_up_requests()
    profiles = {"small": flat_profile(0.01, 4), "large": flat_profile(0.03, 4)}
    slo = 1.2
    runs: list[dict[str, int]] = []

    def slower(workload: Any, pools: Any) -> Any:  # a confirmation 10% slower than the model
        evaluate = Analytic(workload, pools)

        def p95(counts: Any) -> float:
            runs.append(dict(counts))
            return 1.1 * evaluate.p95(counts)

        return p95

    analytic = plan(requests, 40.0, slo_p95_s=slo, profiles=profiles)["plans"][0]
    confirmed = plan(requests, 40.0, slo_p95_s=slo, profiles=profiles, confirmer=slower)["plans"][0]
    counts = {"small": confirmed["small_replicas"], "large": confirmed["large_replicas"]}
    assert confirmed["simulated_p95_s"] <= slo < 1.1 * analytic["predicted_p95_s"] or counts == {
        "small": analytic["small_replicas"],
        "large": analytic["large_replicas"],
    }
    assert confirmed["simulated_p95_s"] <= slo
    for pool in ("small", "large"):
        assert counts[pool] == 1 or confirmed["one_fewer_p95_s"][pool] > slo
        assert {**counts, pool: counts[pool] - 1} in runs or counts[pool] == 1


def test_cold_first_requests_are_flagged_and_can_be_skipped() -> None:
    from glimp_ray.planner import cold_requests, skip_first

    requests = made_up_requests(40, cold=3)
    assert cold_requests(requests) == 3 and cold_requests(made_up_requests(40)) == 0
    # The three cold requests are over 5% of 40: the traced p95 carries them (each 0.95 s of
    # model time becomes 9.5 s) and no replica count brings it to 1.5 s.
    with pytest.raises(ValueError, match="the first 3 traced requests look cold: --skip-first 3"):
        plan(requests, 2.0, slo_p95_s=1.5)
    warm = skip_first(requests, 3)
    assert [r.trace_id for r in warm[:2]] == ["r3", "r4"]
    report = plan(warm, 2.0, slo_p95_s=1.5)
    assert report["plans"][0]["predicted_p95_s"] <= 1.5 and report["cold_requests"] == 0
    assert "--skip-first 3" in format_plan(plan(requests, 2.0))
    with pytest.raises(ValueError, match="--skip-first"):
        skip_first(requests, 40)


def test_the_simulator_confirms_the_planned_counts() -> None:
    pytest.importorskip("glimp_ray.sim")
    from glimp_ray.plan_sim import simulator

    requests = made_up_requests()
    profiles = {"small": flat_profile(0.01, 4), "large": flat_profile(0.03, 4)}
    report = plan(requests, 20.0, slo_p95_s=1.3, profiles=profiles, confirmer=simulator(requests=400, seed=0))
    traced = report["plans"][0]
    assert traced["simulated_p95_s"] <= 1.3
    for pool in ("small", "large"):
        fewer = traced["one_fewer_p95_s"][pool]
        assert (fewer is None and traced[f"{pool}_replicas"] == 1) or fewer > 1.3


def test_cli_thresholds_take_lists() -> None:
    from glimp_ray.cli import build_parser

    args = build_parser().parse_args(
        ["plan", "--traces", "t", "--rps", "1", "--threshold", "0.1,0.5", "--threshold", "1"]
    )
    assert args.threshold == [0.1, 0.5, 1.0]


def test_cli_plan_confirms_with_the_simulator_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from glimp_ray.cli import main

    traces = tmp_path / "spans.jsonl"
    traces.write_text("".join(json.dumps(s) + "\n" for s in batched_trace()))
    out = tmp_path / "plan"
    argv = [
        "plan",
        "--traces",
        str(traces),
        "--rps",
        "2",
        "--slo-p95",
        "1.5",
        "--sim-requests",
        "300",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "p95 confirmed by the simulator" in capsys.readouterr().out
    traced = json.loads((out / "plan.json").read_text())["plans"][0]
    assert traced["simulated_p95_s"] <= 1.5 and set(traced["one_fewer_p95_s"]) == {"small", "large"}


def test_confirmation_descends_from_a_start_far_above_the_need() -> None:
    """A start 40× too many (a pessimistic model) still ends where one replica fewer misses, in
    a few dozen runs: the descent bisects instead of removing one replica a run."""
    from glimp_ray.plan_search import confirm

    def p95(counts: Any) -> float:  # each pool's share: 10 / small + 30 / large seconds
        return 10.0 / counts["small"] + 30.0 / counts["large"]

    found = confirm(p95, 2.0, {"small": 400, "large": 600}, {"small": 1.0, "large": 4.0}, {"small": 1, "large": 1})
    assert found is not None and found.runs <= 60
    small, large = found.replicas["small"], found.replicas["large"]
    assert p95(found.replicas) <= 2.0
    assert p95({"small": small - 1, "large": large}) > 2.0 and p95({"small": small, "large": large - 1}) > 2.0
    assert found.one_fewer_p95_s == {
        "small": p95({"small": small - 1, "large": large}),
        "large": p95({"small": small, "large": large - 1}),
    }

    alone = confirm(lambda c: 100.0 / c["large"], 3.0, {"large": 900}, {"large": 1.0}, {"large": 1})
    assert alone is not None and alone.replicas == {"large": 34} and alone.runs <= 25

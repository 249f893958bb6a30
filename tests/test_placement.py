"""GPU placements: the gpus file, the options it gives, and the cheapest placement against brute force."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from glimp_ray.hardware import fit_on_gpus, model_shape
from glimp_ray.placement import PlacementError, choose, load_gpus, plan_placements, pool_options
from glimp_ray.plan_model import Analytic, PoolModel, Workload
from glimp_ray.plan_report import format_placements, plot_plan
from glimp_ray.profile import EngineProfile
from glimp_ray.traces import TracedCall, TracedRequest

SMALL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
LARGE = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
CONTEXT = 16384


def workload_requests(n: int = 30, seed: int = 0) -> list[TracedRequest]:
    """Made-up traced requests: 6-12 steps of 40-160 tokens, a third of them large, a 100-token answer."""
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        steps = []
        for _ in range(rng.randint(6, 12)):
            entropy = rng.uniform(0, 3)
            route = "large" if entropy > 2 else "small"
            steps.append(
                TracedCall(route, entropy, rng.randint(40, 160), 0.0, glimpse_model_s=0.01 * (route == "large"))
            )
        requests.append(TracedRequest(f"r{i}", tuple(steps), TracedCall("large", None, 100, 0.0), 1.0))
    return requests


def measured_profile(path: Path) -> Path:
    """A profile as `glimp-ray profile` writes one: 20 ms per token alone, slower in larger batches."""
    EngineProfile(
        model="measured",
        engine="vllm",
        dtype="bfloat16",
        accelerator="A100",
        decode_s={1: 0.020, 2: 0.021, 4: 0.023, 8: 0.027, 16: 0.035, 32: 0.051},
        prefill_s_per_token=1e-4,
        glimpse_s=0.02,
        kv_bytes_per_token=1,
        kv_budget_bytes=1 << 40,
        max_concurrency=32,
    ).save(path)
    return path


def gpus_yaml(tmp_path: Path, gpus: list[dict[str, Any]], **top: Any) -> Path:
    measured_profile(tmp_path / "measured.json")
    data = {
        "models": {
            "small": {"model": SMALL, "max_model_len": CONTEXT},
            "large": {"model": LARGE, "max_model_len": CONTEXT},
        },
        "gpus": gpus,
        **top,
    }
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def scaled(speedup: float) -> dict[str, Any]:
    return {"scale_from": {"profile": "measured.json", "decode_speedup": speedup}}


# Made-up types: the small model on any, the large one needs 4 x L4, 1 x A100-80GB or 1 x H100.
MADE_UP = [
    {"name": "L4", "price_per_hour": 0.7, "profiles": {"small": scaled(1.0), "large": scaled(0.5)}},
    {"name": "A10G", "price_per_hour": 1.0, "profiles": {"small": scaled(1.2)}},
    {"name": "A100-80GB", "price_per_hour": 3.5, "profiles": {"small": scaled(2.0), "large": scaled(0.8)}},
    {"name": "H100", "price_per_hour": 6.0, "profiles": {"small": scaled(3.0), "large": scaled(1.4)}},
]


def options_for(tmp_path: Path, gpus: list[dict[str, Any]] = MADE_UP) -> dict[str, Any]:
    path = gpus_yaml(tmp_path, gpus)
    parsed, base = load_gpus(path)
    return pool_options(parsed, base, path)


def test_options_take_the_fewest_gpus_that_hold_the_weights_and_one_context(tmp_path: Path) -> None:
    options = options_for(tmp_path)
    tp = {(pool, o.gpu): o.tensor_parallel for pool, opts in options.items() for o in opts}
    # 32B in bf16 is 61 GiB: an L4 (22.49 GiB x 0.9 - 2 GiB each) needs 4; an 80 GB device one.
    assert tp == {
        ("small", "L4"): 1,
        ("small", "A10G"): 1,
        ("small", "A100-80GB"): 1,
        ("small", "H100"): 1,
        ("large", "L4"): 4,
        ("large", "A100-80GB"): 1,
        ("large", "H100"): 1,
    }
    h100 = next(o for o in options["large"] if o.gpu == "H100")
    fit = fit_on_gpus(model_shape(LARGE), 79.65, 1)
    assert h100.profile.kv_budget_bytes == fit.kv_tokens * fit.kv_bytes_per_token
    assert h100.kv_contexts == pytest.approx(fit.kv_tokens / CONTEXT)
    assert h100.profile.latency(1) == pytest.approx(0.020 / 1.4)
    assert h100.profile.notes["decode_speedup"] == 1.4 and h100.accelerator_type == "H100"
    assert h100.profile.glimpse_s == pytest.approx(0.02 / 1.4)
    assert next(o for o in options["large"] if o.gpu == "A100-80GB").accelerator_type == "A100"


def test_a_scaled_profile_divides_a_lone_call_and_what_batching_adds_separately(tmp_path: Path) -> None:
    rule = {"profile": "measured.json", "decode_speedup": 2.0, "batch_speedup": 10.0, "prefill_speedup": 50.0}
    gpus = [{"name": "H100", "price_per_hour": 5.0, "profiles": {"small": {"scale_from": rule}, "large": scaled(1)}}]
    (small,) = options_for(tmp_path, gpus)["small"]
    # Measured: 20 ms alone, 51 ms at 32 calls: 10 ms alone, (51 - 20) / 10 = 3.1 ms more at 32.
    assert small.profile.decode_s[1] == pytest.approx(0.010)
    assert small.profile.decode_s[32] == pytest.approx(0.010 + 0.0031)
    assert small.profile.prefill_s_per_token == pytest.approx(1e-4 / 50)
    assert small.profile.max_concurrency == 32 and small.profile.tensor_parallel == 1


def test_the_cheapest_placement_is_what_brute_force_finds(tmp_path: Path) -> None:
    options = options_for(tmp_path)
    requests = workload_requests()
    workload = Workload.at(requests, rps=4.0, threshold=1.5, overhead_s=0.05)
    slo = 25.0
    # Brute force: every pair of GPU types, each at the fewest GPUs that fit (computed here),
    # every count up to 30 per pool.
    shapes = {"small": model_shape(SMALL), "large": model_shape(LARGE)}
    cheapest_per_pair: dict[tuple[str, str], tuple[float, tuple[int, int]]] = {}
    for small, large in itertools.product(options["small"], options["large"]):
        for option, pool in ((small, "small"), (large, "large")):
            memory = {"L4": 22.49, "A10G": 22.49, "A100-80GB": 80.0, "H100": 79.65}[option.gpu]
            fewest = next(t for t in (1, 2, 4, 8) if fit_on_gpus(shapes[pool], memory, t).kv_tokens >= CONTEXT)
            assert option.tensor_parallel == fewest
        pools = {"small": PoolModel.of(small.profile, workload), "large": PoolModel.of(large.profile, workload)}
        evaluate = Analytic(workload, pools)
        for s, m in itertools.product(range(1, 31), repeat=2):
            if evaluate.p95({"small": s, "large": m}) <= slo:
                cost = s * small.price_per_replica_hour + m * large.price_per_replica_hour
                pair = (small.gpu, large.gpu)
                if pair not in cheapest_per_pair or cost < cheapest_per_pair[pair][0] - 1e-9:
                    cheapest_per_pair[pair] = (cost, (s, m))
    assert len(cheapest_per_pair) >= 3  # the made-up list leaves a real choice
    best_pair = min(cheapest_per_pair, key=lambda pair: cheapest_per_pair[pair][0])
    chosen, candidates = choose(workload, options, slo, confirmer=None)
    assert chosen is not None
    assert (chosen.options["small"].gpu, chosen.options["large"].gpu) == best_pair
    assert tuple(chosen.replicas.values()) == cheapest_per_pair[best_pair][1]
    assert chosen.cost_per_hour == pytest.approx(cheapest_per_pair[best_pair][0])
    # Every pair that can meet the objective is a candidate, at its own cheapest counts.
    assert {(c.options["small"].gpu, c.options["large"].gpu): c.cost_per_hour for c in candidates} == {
        pair: pytest.approx(cost) for pair, (cost, _) in cheapest_per_pair.items()
    }
    best = cheapest_per_pair[best_pair]
    # The same evaluator as the confirmation: it keeps the choice (one fewer in either pool misses).
    same, _ = choose(workload, options, slo, confirmer=lambda w, p: Analytic(w, p).p95)
    assert same is not None and same.replicas == chosen.replicas and same.cost_per_hour == pytest.approx(best[0])
    assert same.one_fewer_p95_s is not None
    assert all(v is None or v > slo for v in same.one_fewer_p95_s.values())


def test_a_pessimistic_confirmation_adds_replicas_until_it_is_met(tmp_path: Path) -> None:
    options = options_for(tmp_path)
    workload = Workload.at(workload_requests(), rps=4.0, threshold=1.5, overhead_s=0.05)

    def slower(w: Workload, p: Any) -> Any:  # a "simulator" 15% slower than the model
        evaluate = Analytic(w, p)
        return lambda counts: 1.15 * evaluate.p95(counts)

    analytic, _ = choose(workload, options, 25.0, confirmer=None)
    confirmed, _ = choose(workload, options, 25.0, confirmer=slower)
    assert analytic is not None and confirmed is not None
    assert confirmed.simulated_p95_s is not None and confirmed.simulated_p95_s <= 25.0
    assert confirmed.cost_per_hour > analytic.cost_per_hour
    pools = {p: PoolModel.of(o.profile, workload) for p, o in confirmed.options.items()}
    for pool in ("small", "large"):
        fewer = {**confirmed.replicas, pool: confirmed.replicas[pool] - 1}
        assert fewer[pool] == 0 or 1.15 * Analytic(workload, pools).p95(fewer) > 25.0


def test_plan_placements_reports_large_only_and_the_saving(tmp_path: Path) -> None:
    options = options_for(tmp_path)
    report = plan_placements(workload_requests(), 4.0, 25.0, options, thresholds=[1.0, 2.5], overhead_s=0.05)
    large_only = report["large_only"]
    assert set(large_only) >= {"large", "cost_per_hour"} and "small" not in large_only
    # Large-only by brute force over the large types alone.
    workload = Workload.large_only(workload_requests(), 4.0, 0.05)
    costs = []
    for option in options["large"]:
        evaluate = Analytic(workload, {"large": PoolModel.of(option.profile, workload)})
        n = next((n for n in range(1, 100) if evaluate.p95({"large": n}) <= 25.0), None)
        if n is not None:
            costs.append(n * option.price_per_replica_hour)
    assert large_only["cost_per_hour"] == pytest.approx(min(costs))
    for plan in report["plans"]:
        assert plan["saving"] == pytest.approx(1 - plan["best"]["cost_per_hour"] / min(costs))
    # A higher τ sends fewer steps large: the large-step share falls along the sweep.
    shares = [p["large_step_fraction"] for p in report["plans"][1:]]
    assert shares[0] > shares[1]
    text = format_placements(report)
    assert "PLACEHOLDER prices" in text and "large-only" in text and "| 1.000 |" in text
    path = tmp_path / "plan.png"
    plot_plan(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        (
            [{"name": "Z9000", "price_per_hour": 1.0, "profiles": {"small": scaled(1), "large": scaled(1)}}],
            "unknown GPU 'Z9000'",
        ),
        (
            [{"name": "B200", "price_per_hour": 1.0, "profiles": {"small": scaled(1), "large": scaled(1)}}],
            "needs memory_gib",
        ),
        (
            [
                {
                    "name": "L4",
                    "price_per_hour": 1.0,
                    "profiles": {"small": {"file": "nowhere.json"}, "large": scaled(1)},
                }
            ],
            "L4.profiles.small: profile not found",
        ),
        (
            [
                {
                    "name": "T4",
                    "price_per_hour": 1.0,
                    "max_tensor_parallel": 2,
                    "profiles": {"small": scaled(1), "large": scaled(1)},
                }
            ],
            "the large model deepseek-ai/DeepSeek-R1-Distill-Qwen-32B (61.0 GiB of weights, 16384-token context) "
            "fits on none of T4",
        ),
        (
            [{"name": "L4", "price_per_hour": 1.0, "profiles": {"small": scaled(1)}}],
            "no GPU type has a profile for the large model",
        ),
        (
            [{"name": "L4", "price_per_hour": 1.0, "profiles": {"small": scaled(1), "large": scaled(1)}, "cost": 2}],
            "gpus.0.cost: Extra inputs are not permitted",
        ),
        (
            [{"name": "L4", "price_per_hour": 0, "profiles": {"small": scaled(1), "large": scaled(1)}}],
            "gpus.0.price_per_hour: Input should be greater than 0",
        ),
        (
            [
                {
                    "name": "L4",
                    "price_per_hour": 1.0,
                    "profiles": {
                        "small": {
                            "file": "measured.json",
                            "scale_from": {"profile": "measured.json", "decode_speedup": 1},
                        },
                        "large": scaled(1),
                    },
                }
            ],
            "exactly one of file and scale_from",
        ),
    ],
)
def test_bad_gpus_files_get_one_clear_line(tmp_path: Path, gpus: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(PlacementError) as error:
        options_for(tmp_path, gpus)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(str(tmp_path / "gpus.yaml"))


def test_cli_prints_bad_gpus_files_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from glimp_ray.cli import main

    traces = tmp_path / "spans.jsonl"
    spans: list[dict[str, Any]] = []
    for i in range(3):
        spans.append(
            {
                "name": "glimp.request",
                "span_id": f"r{i}",
                "parent_span_id": None,
                "trace_id": f"r{i}",
                "attributes": {"glimp.latency_s": 1.0},
            }
        )
        spans.append(
            {
                "name": "glimp.answer",
                "span_id": f"a{i}",
                "parent_span_id": f"r{i}",
                "trace_id": f"r{i}",
                "attributes": {"glimp.route": "large", "glimp.tokens.generated": 10, "glimp.model_s": 0.5},
            }
        )
    traces.write_text("".join(json.dumps(s) + "\n" for s in spans))
    bad = gpus_yaml(tmp_path, [{"name": "Z9000", "price_per_hour": 1.0, "profiles": {"small": scaled(1)}}])
    argv = ["plan", "--traces", str(traces), "--rps", "1", "--slo-p95", "30", "--gpus", str(bad), "--no-simulate"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("glimp-ray: error: ") and "unknown GPU 'Z9000'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["plan", "--traces", str(traces), "--rps", "1", "--gpus", str(bad)]) == 2
    assert "--gpus needs --slo-p95" in capsys.readouterr().err


def test_the_example_gpus_file_loads() -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "gpus.example.yaml"
    parsed, base = load_gpus(path)
    options = pool_options(parsed, base, path)
    assert {o.gpu for o in options["large"]} and {o.gpu for o in options["small"]}
    assert all(o.placeholder_price for opts in options.values() for o in opts)
    assert {e.name for e in parsed.gpus} == {"L4", "A10G", "A100-80GB", "H100"}


def test_the_simulator_confirms_the_chosen_placement(tmp_path: Path) -> None:
    from glimp_ray.plan_sim import simulator

    options = options_for(tmp_path)
    workload = Workload.at(workload_requests(), rps=4.0, threshold=1.5, overhead_s=0.05)
    runs: list[tuple[str, str, dict[str, int], float]] = []
    simulate = simulator(requests=300, seed=0)

    def recording(w: Workload, pools: Any) -> Any:
        p95 = simulate(w, pools)
        names = (pools["small"].profile.accelerator, pools["large"].profile.accelerator)

        def run(counts: Any) -> float:
            value = p95(counts)
            runs.append((*names, dict(counts), value))
            return value

        return run

    chosen, _ = choose(workload, options, 25.0, confirmer=recording)
    assert chosen is not None and chosen.simulated_p95_s is not None and chosen.simulated_p95_s <= 25.0
    names = (chosen.options["small"].accelerator_type, chosen.options["large"].accelerator_type)
    simulated = {tuple(sorted(c.items())): v for s, lg, c, v in runs if (s, lg) == names}
    for pool in ("small", "large"):
        fewer = {**chosen.replicas, pool: chosen.replicas[pool] - 1}
        # One replica fewer in either pool misses the objective in the simulator (or is none).
        assert fewer[pool] == 0 or simulated[tuple(sorted(fewer.items()))] > 25.0

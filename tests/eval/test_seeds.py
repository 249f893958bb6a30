from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.eval.datasets import Dataset, Example, check_demo
from glimp_ray.eval.report import comparisons_table, seeds_table, validation_table
from glimp_ray.eval.run import calibrate, make_arms, run_eval
from glimp_ray.eval.seeds import Arm, arm_stats, compare, run_seeds


def pair(seed: int | None = 0) -> Collaborator:
    # Step b is the hard one on every signal: entropy 2.0, top-1 0.3, margin 0.05 (others 0.9 / 0.8).
    small = ScriptedEngine(
        "small",
        [
            ScriptedStep("a\n\n", 0.2, top1_prob=0.9, top2_prob=0.1),
            ScriptedStep("b\n\n", 2.0, top1_prob=0.3, top2_prob=0.25),
            ScriptedStep("c\n\n", 0.4, top1_prob=0.9, top2_prob=0.1),
            ScriptedStep("", 0.1, "think_end", top1_prob=0.9, top2_prob=0.1),
        ],
        answer="The answer is 41.",
    )
    large = ScriptedEngine(
        "large",
        [ScriptedStep("A\n\n"), ScriptedStep("B\n\n"), ScriptedStep("C\n\n"), ScriptedStep("", 0, "think_end")],
        answer="The answer is 42.",
    )
    return Collaborator(small, large, CollabParams(seed=seed))


DATASET = Dataset("toy", [Example(str(i), f"q{i}", "42") for i in range(6)], check_demo)
ARMS = [
    Arm("small-only", "small"),
    Arm("large-only", "large"),
    Arm("GlimpRouter (entropy)", "entropy", 1.0),
    Arm("top1", "top1", 0.5),
    Arm("random", "random", random_p=0.5),
]


def test_every_arm_runs_every_example_under_every_seed() -> None:
    outcomes = asyncio.run(run_seeds(pair(), DATASET, ARMS, [0, 1, 2]))
    assert set(outcomes) == {a.label for a in ARMS}
    assert all(len(runs) == 6 for by_seed in outcomes.values() for runs in by_seed.values())
    assert [o.example for o in outcomes["top1"][2]] == [e.id for e in DATASET.examples]
    stats = {s.arm.label: s for s in arm_stats(outcomes, ARMS, "toy")}
    assert stats["small-only"].accuracy == (0.0, 0.0) and stats["large-only"].accuracy == (1.0, 0.0)
    assert stats["GlimpRouter (entropy)"].accuracy == (1.0, 0.0)
    assert stats["GlimpRouter (entropy)"].large_fraction == (pytest.approx(0.25), 0.0)  # step b only
    assert stats["top1"].large_fraction == (pytest.approx(0.25), 0.0)  # 0.3 < 0.5: step b only
    assert len(stats["random"].per_seed) == 3
    # The random baseline draws anew under each seed, and the same way when run again.
    draws = {s: [o.large_steps for o in runs] for s, runs in outcomes["random"].items()}
    assert draws[0] != draws[1]
    again = asyncio.run(run_seeds(pair(), DATASET, ARMS, [0, 1, 2]))
    assert {s: [o.large_steps for o in runs] for s, runs in again["random"].items()} == draws


def test_run_seeds_refuses_duplicate_labels() -> None:
    with pytest.raises(ValueError, match="unique"):
        asyncio.run(run_seeds(pair(), DATASET, [ARMS[0], ARMS[0]], [0]))


def test_paired_comparison_against_large_only() -> None:
    outcomes = asyncio.run(run_seeds(pair(), DATASET, ARMS[:3], [0, 1]))
    worse = compare(outcomes, "small-only", "large-only", resamples=999)
    # Small-only is wrong on all 12 (problem, seed) pairs large-only gets right.
    assert (worse.mcnemar.only_a, worse.mcnemar.only_b) == (0, 12)
    assert worse.mcnemar.p == pytest.approx(2 / 2**12, rel=1e-12)
    assert worse.accuracy.mean == -1.0 and worse.accuracy.n == 6
    same = compare(outcomes, "GlimpRouter (entropy)", "large-only", resamples=999)
    assert (same.mcnemar.only_a, same.mcnemar.only_b, same.mcnemar.p) == (0, 0, 1.0)
    assert same.accuracy.p == 1.0
    assert compare(outcomes, "small-only", "large-only", resamples=999) == worse  # seeded bootstrap
    table = comparisons_table([worse, same])
    assert "| small-only | large-only | -100.0 [-100.0, -100.0] | 0 / 12 | 0.00049 | ≤ 0.001 |" in table


def test_thresholds_are_chosen_per_signal_on_validation() -> None:
    collab = pair()
    validation = asyncio.run(calibrate(collab, DATASET, ["entropy", "top1", "margin", "small"], fractions=(0.25, 0.5)))
    assert set(validation.candidates) == {"entropy", "top1", "margin"}
    # Quantiles of the small-only steps: the entropy above which, the probability below which, a
    # quarter of the steps lie; each routes step b (the answer-changing one) and only it.
    assert validation.chosen["entropy"].threshold == pytest.approx(0.8)  # between 0.4 and 2.0
    assert validation.chosen["top1"].threshold == pytest.approx(0.75)  # between 0.3 and 0.9
    assert validation.chosen["margin"].threshold == pytest.approx(0.05 + 0.75 * 0.75)  # 0.05 to 0.8
    for policy in ("entropy", "top1", "margin"):
        chosen = validation.chosen[policy]
        assert chosen.accuracy == 1.0 and chosen.large_step_fraction == pytest.approx(0.25)
    arms = make_arms(["small", "large", "entropy", "top1", "margin", "random"], validation, None, 1.0, 0.25)
    assert [a.policy for a in arms] == ["small", "large", "entropy", "top1", "margin", "random"]
    assert arms[-1].random_p == pytest.approx(0.25) and arms[-1].label == "random (matched)"
    table = validation_table(validation)
    assert "| top1 | 25% | 0.75 | 100.0% |" in table and "✓" in table


def test_seeds_table_renders_mean_and_sd() -> None:
    outcomes = asyncio.run(run_seeds(pair(), DATASET, ARMS, [0, 1]))
    table = seeds_table(arm_stats(outcomes, ARMS, "toy"))
    assert "| large-only | - | 100.0 ± 0.0% |" in table
    assert "| GlimpRouter (entropy) | 1 | 100.0 ± 0.0% |" in table
    assert "| random | p=0.500 |" in table
    assert len(table.splitlines()) == 2 + len(ARMS)


def test_run_eval_writes_a_report_of_tables(tmp_path: Path) -> None:
    for name, n in (("test", 4), ("val", 3)):
        rows = [json.dumps({"id": f"{name}{i}", "problem": f"q{i}", "answer": "42"}) for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    extra = asyncio.run(
        run_eval(
            pair(),
            str(tmp_path / "test.jsonl"),
            out,
            ["entropy", "top1", "margin", "random", "large", "small"],
            validation=str(tmp_path / "val.jsonl"),
            seeds=2,
            fractions=(0.25, 0.5),
            command="glimp-ray eval --seeds 2",
        )
    )
    assert extra["seeds"] == [0, 1] and extra["examples"] == 4
    report = (out / "results.md").read_text()
    assert "{'" not in report and "': " not in report  # no raw dicts
    assert "## Results on the test split (mean ± standard deviation over 2 seeds)" in report
    assert "| GlimpRouter (entropy) | 0.8 | 100.0 ± 0.0% |" in report
    assert "| small-only | large-only |" in report and "| top1 | GlimpRouter (entropy) |" in report
    assert "## Threshold selection on the validation split" in report
    data = json.loads((out / "results.json").read_text())
    assert len(data["arms"]) == 6 and all(len(a["per_seed"]) == 2 for a in data["arms"])
    assert len(data["outcomes"]["top1"]["1"]) == 4
    assert (out / "accuracy_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

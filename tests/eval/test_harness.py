from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.eval.datasets import Dataset, Example, check_demo, check_math, load_dataset, load_jsonl
from glimp_ray.eval.harness import RunSummary, evaluate, select_threshold
from glimp_ray.eval.report import markdown_table
from glimp_ray.eval.signals import step_error_auroc
from glimp_ray.types import StepSignals


def pair() -> Collaborator:
    # Step entropies 0.2, 2.0, 0.4, then </think>; the small model answers 41, the large 42.
    small = ScriptedEngine(
        "small",
        [
            ScriptedStep("a\n\n", 0.2),
            ScriptedStep("b\n\n", 2.0),
            ScriptedStep("c\n\n", 0.4),
            ScriptedStep("", 0.1, "think_end"),
        ],
        answer="The answer is 41.",
    )
    large = ScriptedEngine(
        "large",
        [
            ScriptedStep("A\n\n"),
            ScriptedStep("B\n\n"),
            ScriptedStep("C\n\n"),
            ScriptedStep("", 0, "think_end"),
        ],
        answer="The answer is 42.",
    )
    return Collaborator(small, large, CollabParams())


DATASET = Dataset("toy", [Example(str(i), f"q{i}", "42") for i in range(4)], check_demo)


def test_evaluate_scores_accuracy_and_routing() -> None:
    collab = pair()
    small, _ = asyncio.run(evaluate(collab, DATASET, "small"))
    large, _ = asyncio.run(evaluate(collab, DATASET, "large"))
    glimp, rows = asyncio.run(evaluate(collab, DATASET, "entropy", threshold=1.0))
    assert (small.accuracy, large.accuracy, glimp.accuracy) == (0.0, 1.0, 1.0)
    assert small.large_step_fraction == 0.0 and large.large_step_fraction == 1.0
    assert glimp.large_step_fraction == pytest.approx(1 / 4)  # one of four steps
    assert small.entropies == [0.2, 2.0, 0.4, 0.1] * 4
    assert len(rows) == 4 and all(r["correct"] for r in rows)
    assert glimp.p95_latency_s >= glimp.mean_latency_s * 0 and glimp.n == 4


def test_random_baseline_draws_differently_per_example_and_repeats_per_run() -> None:
    collab = pair()
    collab.params = CollabParams(seed=0)
    many = Dataset("toy", [Example(str(i), f"q{i}", "42") for i in range(12)], check_demo)

    def routes() -> list[int]:
        _, rows = asyncio.run(evaluate(collab, many, "random", random_p=0.5))
        return [row["large_steps"] for row in rows]

    first = routes()
    assert len(set(first)) > 1  # examples do not all share one draw
    assert routes() == first  # the config's seed makes the run repeat


def test_select_threshold_prefers_fewest_large_steps_that_keep_accuracy() -> None:
    large = RunSummary("large", "large", "d", accuracy=0.80)
    a = RunSummary("a", "entropy", "d", threshold=2.0, accuracy=0.70, large_step_fraction=0.1)
    b = RunSummary("b", "entropy", "d", threshold=1.0, accuracy=0.77, large_step_fraction=0.3)
    c = RunSummary("c", "entropy", "d", threshold=0.5, accuracy=0.79, large_step_fraction=0.5)
    assert select_threshold([a, b, c], large) is b
    assert select_threshold([a], large) is a  # none keeps 95%: the most accurate
    with pytest.raises(ValueError):
        select_threshold([], large)


SUFFIX = CollabParams().verify_suffix


def test_step_error_auroc_on_gold_steps_for_every_signal() -> None:
    # The wrong step has the highest entropy and the lowest top-1 probability, but not the lowest
    # margin; its step signals: the highest mean entropy, not the highest perplexity; it opens with
    # a cue; the large model scores it lowest. Each signal is scored on its own.
    small = ScriptedEngine(
        "small",
        [
            ScriptedStep("x\n\n", 0.1, top1_prob=0.9, top2_prob=0.05, signals=StepSignals(3, 0.1, -0.1, -0.2)),
            ScriptedStep("Wait\n\n", 3.0, top1_prob=0.4, top2_prob=0.1, signals=StepSignals(6, 2.0, -0.3, -3.0)),
            ScriptedStep("z\n\n", 0.3, top1_prob=0.6, top2_prob=0.4, signals=StepSignals(3, 0.5, -0.9, -1.0)),
        ],
    )
    scores = {"x\n\n": 0.9, "Wait\n\n": 0.1, "z\n\n": 0.5}
    large = ScriptedEngine(
        "large", [ScriptedStep("L\n\n")], probe=lambda r: scores[r.continuation.removesuffix(SUFFIX)]
    )
    collab = Collaborator(small, large)
    examples = [Example("e", "q", "1", ("x\n\n", "y\n\n", "z\n\n"), (False, True, True))]
    result = asyncio.run(step_error_auroc(collab, examples))
    assert result["steps"] == 3 and result["small_step_error_rate"] == pytest.approx(1 / 3)
    assert result["auroc"] == {
        "entropy": 1.0, "1 − top1": 1.0, "1 − margin": 0.5, "h_step": 1.0, "ppl_step": 0.5,
        "1 − min_prob": 1.0, "cue": 1.0, "1 − verify": 1.0,
    }  # fmt: skip
    # Against the task's hard-step label (steps 2 and 3): z's margin 0.2 is the lowest.
    assert result["auroc_hard"]["entropy"] == 1.0 and result["auroc_hard"]["1 − margin"] == 1.0
    assert result["auroc_hard"]["ppl_step"] == 1.0 and result["auroc_hard"]["cue"] == 0.75
    assert result["hard_step_fraction"] == pytest.approx(2 / 3)
    assert small.released == ["auroc-e"] and large.released == ["auroc-e"]


def test_datasets_and_checkers(tmp_path: Path) -> None:
    demo = load_dataset("demo", "test", 5)
    assert len(demo.examples) == 5 and demo.examples[0].gold_steps
    assert check_demo("The answer is 7.", "7") and not check_demo("The answer is 8.", "7")
    assert check_math("so the answer is \\boxed{12}", "12")
    path = tmp_path / "math.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"id": "b", "problem": "2+2?", "answer": "4"}\n')
    assert [e.id for e in load_jsonl(path)] == ["1", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="needs 'problem' and 'answer'"):
        load_jsonl(bad)
    with pytest.raises(ValueError, match="not found"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_markdown_table_of_single_runs() -> None:
    runs = [
        RunSummary("small-only", "small", "d", accuracy=0.5, mean_latency_s=1.0),
        RunSummary("GlimpRouter", "entropy", "d", threshold=1.0, accuracy=0.88, mean_latency_s=1.4),
        RunSummary("random", "random", "d", random_p=0.25, accuracy=0.6, mean_latency_s=1.2),
    ]
    table = markdown_table(runs)
    assert "| GlimpRouter | 1 | 88.0% | 1.400 |" in table and "| random | p=0.250 | 60.0% |" in table

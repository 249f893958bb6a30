"""Every policy on the same problems under several seeds, and the paired comparisons.

The arms run interleaved, example by example (each example under every arm before the next),
so a machine whose load drifts weighs on every arm alike; the arms' order rotates per example.
Within one seed, an example's sampling seed is the same under every arm, so two arms that write
a step with the same model from the same context write the same tokens (common random numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.eval.datasets import Dataset
from glimp_ray.eval.harness import Outcome, RunSummary, example_seed, run_example, summarise
from glimp_ray.eval.stats import Bootstrap, McNemar, mcnemar, mean_sd, paired_bootstrap


@dataclass(frozen=True)
class Arm:
    """One policy setting: a policy and its threshold (or the random baseline's p)."""

    label: str
    policy: str
    threshold: float | None = None
    random_p: float | None = None


# outcomes[arm label][seed] is the list of outcomes in the dataset's order.
Outcomes = dict[str, dict[int, list[Outcome]]]


async def run_seeds(
    collab: Collaborator,
    dataset: Dataset,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    progress: Callable[[str], None] | None = None,
) -> Outcomes:
    """Each arm on every example under every seed (see the module's docstring for the order)."""
    if len({a.label for a in arms}) != len(arms):
        raise ValueError("arm labels must be unique")
    outcomes: Outcomes = {a.label: {s: [] for s in seeds} for a in arms}
    for seed in seeds:
        for i, example in enumerate(dataset.examples):
            shift = i % len(arms)
            for arm in [*arms[shift:], *arms[:shift]]:
                outcome = await run_example(
                    collab, example, dataset.check, arm.policy, arm.threshold, arm.random_p, example_seed(seed, i)
                )
                outcomes[arm.label][seed].append(outcome)
            if progress and (i + 1) % 10 == 0:
                progress(f"seed {seed}: {i + 1}/{len(dataset.examples)} examples")
    return outcomes


@dataclass
class ArmStats:
    """One arm over the seeds: each seed's summary, and mean ± sd of its metrics."""

    arm: Arm
    per_seed: list[RunSummary]

    def _mean_sd(self, metric: str) -> tuple[float, float]:
        return mean_sd([getattr(r, metric) for r in self.per_seed])

    @property
    def accuracy(self) -> tuple[float, float]:
        return self._mean_sd("accuracy")

    @property
    def latency(self) -> tuple[float, float]:
        return self._mean_sd("mean_latency_s")

    @property
    def large_fraction(self) -> tuple[float, float]:
        return self._mean_sd("large_step_fraction")

    @property
    def tokens(self) -> tuple[float, float]:
        return self._mean_sd("mean_tokens")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.arm.label,
            "policy": self.arm.policy,
            "threshold": self.arm.threshold,
            "random_p": self.arm.random_p,
            "accuracy": self.accuracy,
            "mean_latency_s": self.latency,
            "large_step_fraction": self.large_fraction,
            "mean_tokens": self.tokens,
            "errors": sum(r.errors for r in self.per_seed),
            "per_seed": [r.to_dict() for r in self.per_seed],
        }


def arm_stats(outcomes: Outcomes, arms: Sequence[Arm], dataset: str) -> list[ArmStats]:
    return [
        ArmStats(
            arm,
            [
                summarise(runs, arm.label, arm.policy, dataset, arm.threshold, arm.random_p)
                for runs in outcomes[arm.label].values()
            ],
        )
        for arm in arms
    ]


@dataclass(frozen=True)
class Comparison:
    """Arm A against arm B on the same problems and seeds (differences are A − B).

    Accuracy: McNemar's exact test over (problem, seed) pairs, and a bootstrap over problems of
    the per-problem accuracy difference (averaged over seeds). Latency: a bootstrap over problems
    of the per-problem mean latency difference."""

    a: str
    b: str
    mcnemar: McNemar
    accuracy: Bootstrap
    latency: Bootstrap

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "mcnemar": vars(self.mcnemar),
            "accuracy_difference": vars(self.accuracy),
            "latency_difference_s": vars(self.latency),
        }


def _per_problem(outcomes: dict[int, list[Outcome]], value: Callable[[Outcome], float]) -> list[float]:
    """Each problem's value averaged over the seeds."""
    seeds = list(outcomes.values())
    return [sum(value(run[i]) for run in seeds) / len(seeds) for i in range(len(seeds[0]))]


def compare(outcomes: Outcomes, a: str, b: str, resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Paired tests of arm ``a`` against arm ``b`` (see :class:`Comparison`)."""
    runs_a, runs_b = outcomes[a], outcomes[b]
    if runs_a.keys() != runs_b.keys():
        raise ValueError(f"{a} and {b} did not run under the same seeds")
    right_a = [o.correct for s in runs_a for o in runs_a[s]]
    right_b = [o.correct for s in runs_b for o in runs_b[s]]
    accuracy = [x - y for x, y in zip(_per_problem(runs_a, _right), _per_problem(runs_b, _right), strict=True)]
    latency = [x - y for x, y in zip(_per_problem(runs_a, _latency), _per_problem(runs_b, _latency), strict=True)]
    return Comparison(
        a,
        b,
        mcnemar(right_a, right_b),
        paired_bootstrap(accuracy, resamples, seed),
        paired_bootstrap(latency, resamples, seed),
    )


def _right(outcome: Outcome) -> float:
    return float(outcome.correct)


def _latency(outcome: Outcome) -> float:
    return outcome.latency_s

"""Run a dataset through the loop under one policy and summarise accuracy and latency."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.eval.datasets import Checker, Dataset, Example
from glimp_ray.eval.metrics import percentile
from glimp_ray.policies import LARGE


@dataclass
class RunSummary:
    """One policy (and threshold) on one dataset."""

    label: str
    policy: str
    dataset: str
    threshold: float | None = None
    random_p: float | None = None
    n: int = 0
    accuracy: float = 0.0
    mean_latency_s: float = 0.0
    p95_latency_s: float = 0.0
    mean_tokens: float = 0.0
    large_step_fraction: float = 0.0
    large_token_fraction: float = 0.0
    errors: int = 0
    entropies: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("entropies")
        return data


@dataclass
class Outcome:
    """One example under one policy and seed."""

    example: str
    correct: bool
    latency_s: float
    steps: int = 0
    large_steps: int = 0
    tokens: int = 0
    large_tokens: int = 0
    answer: str = ""
    error: str | None = None
    entropies: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("entropies")
        return data


def example_seed(seed: int | None, index: int) -> int:
    """The sampling (and random routing) seed of example ``index`` in a run seeded ``seed``."""
    return (0 if seed is None else seed) * 1_000_003 + index


async def run_example(
    collab: Collaborator,
    example: Example,
    check: Checker,
    policy: str,
    threshold: float | None = None,
    random_p: float | None = None,
    seed: int | None = None,
) -> Outcome:
    """One request to completion, scored; an exception scores it wrong (not fatal)."""
    start = time.perf_counter()
    try:
        result = await collab.run(
            example.messages(),
            policy=policy,
            threshold=threshold,
            random_p=random_p,
            request_id=f"eval-{policy}-{threshold}-{seed}-{example.id}",
            seed=seed,
        )
    except Exception as exc:
        return Outcome(example.id, False, time.perf_counter() - start, error=str(exc))
    large = [s for s in [*result.steps, result.answer_record] if s.model == LARGE]
    return Outcome(
        example=example.id,
        correct=check(result.answer, example.answer),
        latency_s=result.latency_s,
        steps=len(result.steps),
        large_steps=sum(s.model == LARGE for s in result.steps),
        tokens=result.completion_tokens,
        large_tokens=sum(s.tokens for s in large),
        answer=result.answer,
        entropies=[s.entropy for s in result.steps if s.entropy is not None],
    )


def summarise(
    outcomes: Sequence[Outcome],
    label: str,
    policy: str,
    dataset: str,
    threshold: float | None = None,
    random_p: float | None = None,
) -> RunSummary:
    """Accuracy, latency and the large share of steps and tokens over ``outcomes``."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("no outcomes to summarise")
    steps = sum(o.steps for o in outcomes)
    tokens = sum(o.tokens for o in outcomes)
    latencies = [o.latency_s for o in outcomes]
    return RunSummary(
        label=label,
        policy=policy,
        dataset=dataset,
        threshold=threshold,
        random_p=random_p,
        n=n,
        accuracy=sum(o.correct for o in outcomes) / n,
        mean_latency_s=sum(latencies) / n,
        p95_latency_s=percentile(latencies, 95),
        mean_tokens=tokens / n,
        large_step_fraction=sum(o.large_steps for o in outcomes) / steps if steps else 0.0,
        large_token_fraction=sum(o.large_tokens for o in outcomes) / tokens if tokens else 0.0,
        errors=sum(o.error is not None for o in outcomes),
        entropies=[e for o in outcomes for e in o.entropies],
    )


async def evaluate(
    collab: Collaborator,
    dataset: Dataset,
    policy: str,
    threshold: float | None = None,
    random_p: float | None = None,
    label: str | None = None,
    progress: Callable[[str], None] | None = None,
    seed: int | None = None,
) -> tuple[RunSummary, list[dict[str, Any]]]:
    """Run every example one at a time (so latencies are not inflated by queueing).

    Each example gets its own seed from ``seed`` (default: the config's), so random routing's
    draws differ between examples and repeat between runs; unseeded configs sample unseeded,
    except the random policy, which is always seeded."""
    base = collab.params.seed if seed is None else seed
    outcomes: list[Outcome] = []
    for i, example in enumerate(dataset.examples):
        example_seed_ = example_seed(base, i) if base is not None or policy == "random" else None
        outcome = await run_example(collab, example, dataset.check, policy, threshold, random_p, example_seed_)
        outcomes.append(outcome)
        if progress and (i + 1) % 50 == 0:
            correct = sum(o.correct for o in outcomes)
            progress(f"{label or policy}: {i + 1}/{len(dataset.examples)} accuracy so far {correct / (i + 1):.3f}")
    summary = summarise(outcomes, label or policy, policy, dataset.name, threshold, random_p)
    rows = [{**o.to_dict(), "expected": e.answer} for o, e in zip(outcomes, dataset.examples, strict=True)]
    return summary, rows


def select_threshold(candidates: Sequence[RunSummary], large_only: RunSummary, keep: float = 0.95) -> RunSummary:
    """The candidate with the fewest large steps that keeps ``keep`` of large-only accuracy
    (the most accurate one if none does)."""
    if not candidates:
        raise ValueError("no candidate thresholds")
    good = [c for c in candidates if c.accuracy >= keep * large_only.accuracy]
    if good:
        return min(good, key=lambda c: (c.large_step_fraction, -c.accuracy))
    return max(candidates, key=lambda c: (c.accuracy, -c.large_step_fraction))

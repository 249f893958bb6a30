"""Run a dataset through the loop under each policy and summarise accuracy and latency."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.eval.datasets import Dataset, Example
from glimp_ray.eval.metrics import auroc, percentile
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest


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


def _example_seed(seed: int | None, index: int) -> int:
    return (0 if seed is None else seed) * 1_000_003 + index


async def evaluate(
    collab: Collaborator,
    dataset: Dataset,
    policy: str,
    threshold: float | None = None,
    random_p: float | None = None,
    label: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[RunSummary, list[dict[str, Any]]]:
    """Run every example one at a time (so latencies are not inflated by queueing)."""
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    steps = large_steps = tokens = large_tokens = correct = errors = 0
    entropies: list[float] = []
    for i, example in enumerate(dataset.examples):
        start = time.perf_counter()
        try:
            result = await collab.run(
                example.messages(),
                policy=policy,
                threshold=threshold,
                random_p=random_p,
                request_id=f"eval-{policy}-{threshold}-{example.id}",
                # Random routing is seeded by the request's seed: one seed per example, so the
                # baseline's draws differ between examples and repeat between runs.
                seed=_example_seed(collab.params.seed, i) if policy == "random" else None,
            )
        except Exception as exc:  # one failing example is scored wrong, not fatal
            errors += 1
            latencies.append(time.perf_counter() - start)
            rows.append({"id": example.id, "correct": False, "error": str(exc)})
            continue
        ok = dataset.check(result.answer, example.answer)
        correct += ok
        latencies.append(result.latency_s)
        steps += len(result.steps)
        large_steps += sum(s.model == "large" for s in result.steps)
        tokens += result.completion_tokens
        large_tokens += sum(s.tokens for s in [*result.steps, result.answer_record] if s.model == "large")
        entropies += [s.entropy for s in result.steps if s.entropy is not None]
        rows.append(
            {
                "id": example.id,
                "correct": ok,
                "answer": result.answer,
                "expected": example.answer,
                "latency_s": result.latency_s,
                "steps": len(result.steps),
                "large_steps": sum(s.model == "large" for s in result.steps),
                "tokens": result.completion_tokens,
            }
        )
        if progress and (i + 1) % 50 == 0:
            progress(f"{label or policy}: {i + 1}/{len(dataset.examples)} accuracy so far {correct / (i + 1):.3f}")
    n = len(dataset.examples)
    summary = RunSummary(
        label=label or policy,
        policy=policy,
        dataset=dataset.name,
        threshold=threshold,
        random_p=random_p,
        n=n,
        accuracy=correct / n,
        mean_latency_s=sum(latencies) / n,
        p95_latency_s=percentile(latencies, 95),
        mean_tokens=tokens / n,
        large_step_fraction=large_steps / steps if steps else 0.0,
        large_token_fraction=large_tokens / tokens if tokens else 0.0,
        errors=errors,
        entropies=entropies,
    )
    return summary, rows


async def step_error_auroc(
    collab: Collaborator, examples: Sequence[Example], entropy: str = "full", top_k: int = 20
) -> dict[str, float]:
    """How well the small model's first-token entropy predicts its wrong steps.

    Teacher-forced on the gold solution: at each gold step the small model glimpses and
    writes the step greedily; the step is wrong when its text differs from the gold step.
    """
    small = collab.clients["small"]
    params = collab.params
    scores: list[float] = []
    wrong: list[bool] = []
    for example in examples:
        session = f"auroc-{example.id}"
        for i, gold in enumerate(example.gold_steps):
            request = StepRequest(
                session,
                messages=tuple(example.messages()),
                transcript="".join(example.gold_steps[:i]),
                glimpse=GlimpseSpec(entropy, top_k),  # type: ignore[arg-type]
                generate=GenerateSpec(params.step_max_tokens, (params.delimiter,), SamplingParams(0.0)),
            )
            result = await small.step(request)
            assert result.entropy is not None
            scores.append(result.entropy)
            wrong.append(result.text != gold)
        await small.release(session)
    return {
        "auroc": auroc(scores, wrong),
        "steps": float(len(wrong)),
        "small_step_error_rate": sum(wrong) / len(wrong) if wrong else float("nan"),
    }


def select_threshold(candidates: Sequence[RunSummary], large_only: RunSummary, keep: float = 0.95) -> RunSummary:
    """The candidate with the fewest large steps that keeps ``keep`` of large-only accuracy
    (the most accurate one if none does)."""
    if not candidates:
        raise ValueError("no candidate thresholds")
    good = [c for c in candidates if c.accuracy >= keep * large_only.accuracy]
    if good:
        return min(good, key=lambda c: (c.large_step_fraction, -c.accuracy))
    return max(candidates, key=lambda c: (c.accuracy, -c.large_step_fraction))

"""The glimpse's signals for the evaluation: recorded from a run (to calibrate thresholds) and
scored as predictors of the small model's wrong steps (AUROC).

Each signal is scored so that a higher score means "send the step large": the entropy as is,
the top-1 probability and the margin as one minus their value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.engine.base import StepClient
from glimp_ray.eval.datasets import Example
from glimp_ray.eval.metrics import auroc
from glimp_ray.types import (
    GenerateSpec,
    GlimpseSignal,
    GlimpseSignals,
    GlimpseSpec,
    SamplingParams,
    StepRequest,
    StepResult,
)

SIGNALS: tuple[GlimpseSignal, ...] = ("entropy", "top1", "margin")
SCORE_NAMES: dict[GlimpseSignal, str] = {"entropy": "entropy", "top1": "1 − top1", "margin": "1 − margin"}


def large_score(signals: GlimpseSignals, signal: GlimpseSignal) -> float:
    """The signal oriented so that higher means large (see the module's docstring)."""
    value = signals.value(signal)
    return value if signal == "entropy" else 1.0 - value


class SignalRecorder:
    """A :class:`StepClient` passing every call through and keeping each glimpse's signals (the
    loop's step records carry the entropy only). Other attributes are the wrapped client's."""

    def __init__(self, inner: StepClient):
        self.inner = inner
        self.signals: list[GlimpseSignals] = []

    async def step(self, request: StepRequest) -> StepResult:
        result = await self.inner.step(request)
        if request.glimpse is not None and result.glimpse is not None:
            self.signals.append(result.glimpse)
        return result

    async def release(self, session_id: str) -> None:
        await self.inner.release(session_id)

    def values(self, signal: GlimpseSignal) -> list[float]:
        return [s.value(signal) for s in self.signals]


async def step_error_auroc(
    collab: Collaborator, examples: Sequence[Example], entropy: str = "full", top_k: int = 20
) -> dict[str, Any]:
    """How well each glimpse signal predicts the small model's wrong steps.

    Teacher-forced on the gold solution: at each gold step the small model glimpses and writes
    the step greedily; the step is wrong when its text differs from the gold step. Where the
    dataset marks hard steps (the demo task's multiplications), the AUROC for that label too."""
    small = collab.clients["small"]
    params = collab.params
    scores: dict[GlimpseSignal, list[float]] = {s: [] for s in SIGNALS}
    wrong: list[bool] = []
    hard: list[bool] = []
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
            signals = result.glimpse
            assert signals is not None
            for signal in SIGNALS:
                scores[signal].append(large_score(signals, signal))
            wrong.append(result.text != gold)
            if example.hard_steps:
                hard.append(example.hard_steps[i])
        await small.release(session)
    report: dict[str, Any] = {
        "steps": len(wrong),
        "small_step_error_rate": sum(wrong) / len(wrong) if wrong else float("nan"),
        "auroc": {SCORE_NAMES[s]: auroc(scores[s], wrong) for s in SIGNALS},
    }
    if hard and len(hard) == len(wrong):
        report["hard_step_fraction"] = sum(hard) / len(hard)
        report["auroc_hard"] = {SCORE_NAMES[s]: auroc(scores[s], hard) for s in SIGNALS}
    return report

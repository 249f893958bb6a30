"""Every step signal for the evaluation: recorded from a run (to calibrate thresholds) and scored
as predictors of the small model's wrong steps (AUROC).

Pre-step signals come from the glimpse (``entropy``, ``top1``, ``margin``); post-step ones from
the small model's written step (``h_step``, ``ppl_step``, ``min_prob``, ``cue``) or the large
model's verification of it (``verify``). Each is scored so that a higher score means "send the
step large": an entropy or a perplexity as is, a probability (top-1, margin, lowest token,
verification) as one minus its value, cue as 1 or 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from glimp_ray.collab import Collaborator
from glimp_ray.engine.base import StepClient
from glimp_ray.eval.datasets import Example
from glimp_ray.eval.metrics import HIGH_MEANS_LARGE, auroc
from glimp_ray.policies import opens_with_cue
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult

GLIMPSE_SIGNALS = ("entropy", "top1", "margin")
STEP_SIGNALS = ("h_step", "ppl_step", "min_prob")
SIGNALS = (*GLIMPSE_SIGNALS, *STEP_SIGNALS, "cue", "verify")
SCORE_NAMES = {
    "entropy": "entropy",
    "top1": "1 − top1",
    "margin": "1 − margin",
    "h_step": "h_step",
    "ppl_step": "ppl_step",
    "min_prob": "1 − min_prob",
    "cue": "cue",
    "verify": "1 − verify",
}


def large_score(value: float, signal: str) -> float:
    """The signal oriented so that higher means large (see the module's docstring)."""
    return value if signal in HIGH_MEANS_LARGE or signal == "cue" else 1.0 - value


def signal_values(result: StepResult) -> dict[str, float]:
    """The signals one call measured: its glimpse's, its written step's, its probe (verify)."""
    values: dict[str, float] = {}
    if result.glimpse is not None:
        values.update({s: result.glimpse.value(s) for s in GLIMPSE_SIGNALS})  # type: ignore[arg-type]
    if result.step_signals is not None:
        values.update({s: result.step_signals.value(s) for s in STEP_SIGNALS})  # type: ignore[arg-type]
    if result.probe_prob is not None:
        values["verify"] = result.probe_prob
    return values


class SignalRecorder:
    """A :class:`StepClient` passing every call through and keeping the signals each measured (the
    loop's step records carry the acting ones only). ``step_signals``: every thinking step it
    writes also computes its :class:`~glimp_ray.types.StepSignals`. Other attributes are the
    wrapped client's."""

    def __init__(self, inner: StepClient, step_signals: bool = True):
        self.inner = inner
        self.step_signals = step_signals
        self.recorded: list[dict[str, float]] = []

    async def step(self, request: StepRequest) -> StepResult:
        gen = request.generate
        if self.step_signals and gen is not None and not gen.signals and not request.close_thinking:
            request = dataclasses.replace(request, generate=dataclasses.replace(gen, signals=True))
        result = await self.inner.step(request)
        values = signal_values(result)
        if values:
            self.recorded.append(values)
        return result

    async def release(self, session_id: str) -> None:
        await self.inner.release(session_id)

    def values(self, signal: str) -> list[float]:
        return [r[signal] for r in self.recorded if signal in r]


async def step_error_auroc(
    collab: Collaborator, examples: Sequence[Example], entropy: str = "full", top_k: int = 20
) -> dict[str, Any]:
    """How well each signal predicts the small model's wrong steps.

    Teacher-forced on the gold solution: at each gold step the small model glimpses and writes
    the step greedily, with its step signals; the large model reads that step and the verify
    suffix (its "yes" probability); the step is wrong when its text differs from the gold step.
    Where the dataset marks hard steps (the demo task's multiplications), the AUROC for that
    label too."""
    small, large = collab.clients["small"], collab.clients["large"]
    params = collab.params
    scores: dict[str, list[float]] = {s: [] for s in SIGNALS}
    wrong: list[bool] = []
    hard: list[bool] = []
    for example in examples:
        session = f"auroc-{example.id}"
        for i, gold in enumerate(example.gold_steps):
            context = "".join(example.gold_steps[:i])
            request = StepRequest(
                session,
                messages=tuple(example.messages()),
                transcript=context,
                glimpse=GlimpseSpec(entropy, top_k),  # type: ignore[arg-type]
                generate=GenerateSpec(params.step_max_tokens, (params.delimiter,), SamplingParams(0.0), signals=True),
            )
            result = await small.step(request)
            check = await large.step(
                StepRequest(
                    session,
                    messages=tuple(example.messages()),
                    transcript=context,
                    continuation=result.text + params.verify_suffix,
                    glimpse=GlimpseSpec(entropy, top_k, probe=params.verify_tokens),  # type: ignore[arg-type]
                )
            )
            values = {
                **signal_values(result),
                "verify": check.probe_prob,
                "cue": float(opens_with_cue(result.text, params.cues)),
            }
            for signal in SIGNALS:
                value = values.get(signal)
                assert value is not None, f"the teacher-forced step measured no {signal}"
                scores[signal].append(large_score(value, signal))
            wrong.append(result.text != gold)
            if example.hard_steps:
                hard.append(example.hard_steps[i])
        await small.release(session)
        await large.release(session)
    report: dict[str, Any] = {
        "steps": len(wrong),
        "small_step_error_rate": sum(wrong) / len(wrong) if wrong else float("nan"),
        "auroc": {SCORE_NAMES[s]: auroc(scores[s], wrong) for s in SIGNALS},
    }
    if hard and len(hard) == len(wrong):
        report["hard_step_fraction"] = sum(hard) / len(hard)
        report["auroc_hard"] = {SCORE_NAMES[s]: auroc(scores[s], hard) for s in SIGNALS}
    return report

"""The parameters of one collaboration: routing, step shape, budgets, sampling."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from glimp_ray.policies import LARGE, POLICY_NAMES, SMALL, Route, check_random_p
from glimp_ray.types import EntropyKind, GlimpseSpec, SamplingParams

Mode = Literal["fused", "paper"]
AnswerModel = Literal["auto", "small", "large"]


@dataclass(frozen=True)
class CollabParams:
    """Everything that shapes one collaboration; per-request overrides via :meth:`replace`.

    ``answer_model="auto"`` answers with the large model, except under the ``small``
    policy, whose baseline never touches the large model. ``stop`` strings end the answer
    (and are left out of it, as OpenAI does); they do not cut the thinking.
    """

    policy: str = "entropy"
    mode: Mode = "fused"
    threshold: float = 1.0
    entropy: EntropyKind = "full"
    top_k: int = 20
    random_p: float = 0.25
    delimiter: str = "\n\n"
    step_max_tokens: int = 512
    thinking_budget: int = 8192
    answer_max_tokens: int = 2048
    answer_model: AnswerModel = "auto"
    stop: tuple[str, ...] = ()
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"policy must be one of {POLICY_NAMES}, got {self.policy!r}")
        if self.mode not in ("fused", "paper"):
            raise ValueError(f"mode must be 'fused' or 'paper', got {self.mode!r}")
        if self.answer_model not in ("auto", "small", "large"):
            raise ValueError(f"answer_model must be auto|small|large, got {self.answer_model!r}")
        if not self.delimiter:
            raise ValueError("delimiter must be non-empty")
        for name in ("step_max_tokens", "thinking_budget", "answer_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_random_p(self.random_p)
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        # Checked here so a bad value fails before any model is called.
        GlimpseSpec(self.entropy, self.top_k)
        SamplingParams(self.temperature, self.top_p)

    def replace(self, **overrides: object) -> CollabParams:
        """A copy with ``overrides`` applied (``None`` values are ignored)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def resolved_answer_model(self) -> Route:
        if self.answer_model == "auto":
            return SMALL if self.policy == "small" else LARGE
        return self.answer_model

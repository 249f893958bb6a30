"""The parameters of one collaboration: routing, step shape, budgets, sampling, and the preset
whose loop rules they run under."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from glimp_ray.policies import (
    DEFAULT_CUES,
    DEFAULT_VERIFY_SUFFIX,
    DEFAULT_VERIFY_TOKENS,
    LARGE,
    POLICY_NAMES,
    SMALL,
    Route,
    Shadow,
    check_random_p,
    check_shadow,
)
from glimp_ray.types import EntropyKind, GlimpseSpec, SamplingParams

Mode = Literal["fused", "paper"]
AnswerModel = Literal["auto", "small", "large"]
Preset = Literal["glimp", "reference"]
PRESETS: tuple[Preset, ...] = ("glimp", "reference")
REFERENCE_TOP_K = 20


@dataclass(frozen=True)
class LoopRules:
    """The loop's rules where the paper's reference code and this project's default differ."""

    large_at_threshold: bool
    """A glimpse entropy equal to τ goes large (``H >= τ``), not only one above it."""
    first_repeat_step: int
    """Index of the first step that ends the thinking by repeating the step before it."""
    delimiter_after_every_step: bool
    """A step cut by ``max_tokens`` is followed by the delimiter too, as every other step is."""
    clip_to_budget: bool
    """A step's ``max_tokens`` is clipped to the thinking budget left."""
    newline_before_think_end: bool
    r"""The answer's context is the steps joined by the delimiter, then ``"\n</think>\n\n"``."""


PRESET_RULES: dict[Preset, LoopRules] = {
    # This project: a step's text is kept as written; the budget is a hard cap.
    "glimp": LoopRules(False, 1, False, True, False),
    # github.com/Zengwh02/GlimpRouter, src/glimp_router.py.
    "reference": LoopRules(True, 2, True, False, True),
}


def check_preset(preset: str, entropy: str, top_k: int) -> None:
    """The reference preset glimpses the reference code's entropy: top-20, renormalised."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "reference" and (entropy, top_k) != ("topk", REFERENCE_TOP_K):
        raise ValueError(
            f"preset reference glimpses the top-{REFERENCE_TOP_K} entropy (entropy topk, top_k "
            f"{REFERENCE_TOP_K}), not entropy {entropy} with top_k {top_k}; use preset glimp for another"
        )


@dataclass(frozen=True)
class CollabParams:
    """Everything that shapes one collaboration; per-request overrides via :meth:`replace`.

    ``answer_model="auto"`` answers with the large model, except under the ``small``
    policy, whose baseline never touches the large model. ``stop`` strings end the answer
    (and are left out of it, as OpenAI does); they do not cut the thinking. ``preset`` picks the
    loop's :class:`LoopRules`; ``reference`` also needs ``entropy="topk"`` and ``top_k=20``, which
    :meth:`replace` fills in when it switches to it. ``seed`` seeds the sampling and the random
    policy: one seed routes every request alike.
    """

    preset: Preset = "glimp"
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
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    sampling_top_k: int | None = None
    min_p: float | None = None
    streaming_glimpse: bool = True  # fused mode: the small pool writes a run of easy steps per call
    # Shadow policies: (name, τ) pairs, recorded beside the acting one (a mapping name -> τ is
    # taken too); see glimp_ray.policies.check_shadow.
    shadow: Shadow = ()
    # Post-step policies: cue's words, and verify's suffix and "yes" tokens (glimp_ray.policies).
    cues: tuple[str, ...] = DEFAULT_CUES
    verify_suffix: str = DEFAULT_VERIFY_SUFFIX
    verify_tokens: tuple[str, ...] = DEFAULT_VERIFY_TOKENS

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
        object.__setattr__(self, "shadow", check_shadow(self.shadow))  # frozen: normalised once, here
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        for name in ("cues", "verify_tokens"):
            values = getattr(self, name)
            if isinstance(values, str) or not values or any(not isinstance(v, str) or not v.strip() for v in values):
                raise ValueError(f"{name} must be a non-empty list of non-blank strings")
            object.__setattr__(self, name, tuple(values))
        if not isinstance(self.verify_suffix, str) or not self.verify_suffix.strip():
            raise ValueError("verify_suffix must be a non-blank string")
        # Checked here so a bad value fails before any model is called.
        GlimpseSpec(self.entropy, self.top_k)
        check_preset(self.preset, self.entropy, self.top_k)
        SamplingParams(self.temperature, self.top_p, None, self.sampling_top_k, self.min_p)

    def replace(self, **overrides: object) -> CollabParams:
        """A copy with ``overrides`` applied (``None`` values are ignored). Switching to the
        reference preset also sets its entropy unless ``overrides`` choose one (a different one is
        then an error)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        if changes.get("preset") == "reference":
            changes = {"entropy": "topk", "top_k": REFERENCE_TOP_K, **changes}
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def rules(self) -> LoopRules:
        return PRESET_RULES[self.preset]

    @property
    def resolved_answer_model(self) -> Route:
        if self.answer_model == "auto":
            return SMALL if self.policy == "small" else LARGE
        return self.answer_model

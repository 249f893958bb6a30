"""What the loop reports: one record per step (and the answer), and the whole result.

The single source of truth for the API's trace, spans, metrics and the capacity planner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from glimp_ray.params import CollabParams
from glimp_ray.policies import LARGE, Route, ShadowTally, tally_shadow
from glimp_ray.types import FinishReason, StepResult

StopReason = Literal["think_end", "eos", "repeat", "budget", "context"]


@dataclass
class StepRecord:
    """One thinking step (or the answer, with ``index == -1``): the single source of truth."""

    index: int
    model: Route
    text: str
    entropy: float | None
    tokens: int
    finish_reason: FinishReason
    latency_s: float
    threshold: float | None = None  # the τ this step was routed on (entropy policy; the router's τ may move)
    glimpse_s: float = 0.0  # wall-clock of the glimpse as the loop saw it (queueing and calls included)
    glimpse_model_s: float = 0.0  # the glimpse's seconds in the small model (the capacity planner's cost)
    reused_tokens: int = 0
    prefill_tokens: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    replica: str = ""
    glimpse_replica: str = ""
    glimpse_prefill_tokens: int = 0
    context_tokens: int = 0
    fell_back: bool = False
    top1_prob: float | None = None  # the glimpse's top-1 probability (None: no glimpse, or a pool without it)
    top2_prob: float | None = None
    policy: str = ""  # the acting policy that routed it (the answer: none)
    shadow: dict[str, Route] = field(default_factory=dict)  # each shadow policy's decision on the same step
    # The small model's signals over a step it wrote (post-step policies, or shadows reading them).
    step_entropy: float | None = None  # mean token entropy (h_step)
    step_perplexity: float | None = None  # ppl_step
    step_min_prob: float | None = None  # min_prob
    # A post-step policy's decision: the value it decided on, whether the large model rewrote the
    # step, the discarded draft (tokens, seconds) and verify's call (seconds, tokens prefilled).
    post_signal: float | None = None
    rewritten: bool = False
    draft_tokens: int = 0
    draft_s: float = 0.0
    check_s: float = 0.0
    check_prefill_tokens: int = 0

    @property
    def model_s(self) -> float:
        """Seconds in the model (prefill and decode) for the call that wrote it."""
        return self.prefill_s + self.decode_s

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class CollabResult:
    """A whole response: the reasoning, the answer and the per-step records."""

    request_id: str
    reasoning: str
    answer: str
    steps: list[StepRecord]
    answer_record: StepRecord
    stop_reason: StopReason
    latency_s: float
    params: CollabParams = field(repr=False, default_factory=CollabParams)

    @property
    def large_step_fraction(self) -> float:
        if not self.steps:
            return 0.0
        return sum(s.model == LARGE for s in self.steps) / len(self.steps)

    @property
    def shadow_tallies(self) -> dict[str, ShadowTally]:
        """Per shadow policy: the steps it decided, its agreement with the acting decisions and the
        large fraction it would have had."""
        return tally_shadow((s.model, s.shadow) for s in self.steps)

    @property
    def thinking_tokens(self) -> int:
        return sum(s.tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return self.thinking_tokens + self.answer_record.tokens

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens as the first call's model counted them (the transcript was empty)."""
        first = self.steps[0] if self.steps else self.answer_record
        return first.context_tokens

    def to_dict(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "latency_s": self.latency_s,
            "large_step_fraction": self.large_step_fraction,
            "thinking_tokens": self.thinking_tokens,
            "completion_tokens": self.completion_tokens,
            "shadow": {name: t.to_dict() for name, t in self.shadow_tallies.items()},
            "steps": [s.to_dict() for s in self.steps],
            "answer_record": self.answer_record.to_dict(),
        }


def record_of(
    index: int,
    route: Route,
    result: StepResult,
    entropy: float | None,
    latency_s: float,
    glimpse_s: float,
    glimpse: StepResult | None,
    threshold: float | None = None,
    signals: StepResult | None = None,
    policy: str = "",
    shadow: dict[str, Route] | None = None,
) -> StepRecord:
    """``glimpse`` is the separate small call (paper mode) or the routed fused call; ``signals`` the
    call whose glimpse routed the step (its top-1 and top-2 probabilities are recorded). The step
    signals are the small model's: of ``result`` when it has them, else of ``signals`` (a
    post-step policy's draft)."""
    source = result if result.step_signals is not None else signals
    step = source.step_signals if source is not None else None
    return StepRecord(
        index=index,
        model=route,
        text=result.text,
        entropy=entropy,
        tokens=result.generated_tokens,
        finish_reason=result.finish_reason,
        latency_s=latency_s,
        threshold=threshold,
        glimpse_s=glimpse_s,
        glimpse_model_s=glimpse.model_s if glimpse else 0.0,
        reused_tokens=result.reused_tokens,
        prefill_tokens=result.prefill_tokens,
        queue_s=result.queue_s,
        prefill_s=result.prefill_s,
        decode_s=result.decode_s,
        replica=result.replica,
        glimpse_replica=glimpse.replica if glimpse else "",
        glimpse_prefill_tokens=glimpse.prefill_tokens if glimpse else 0,
        context_tokens=result.context_tokens,
        fell_back=result.fell_back,
        top1_prob=signals.top1_prob if signals else None,
        top2_prob=signals.top2_prob if signals else None,
        policy=policy,
        shadow=dict(shadow or {}),
        step_entropy=step.mean_entropy if step else None,
        step_perplexity=step.perplexity if step else None,
        step_min_prob=step.min_prob if step else None,
    )

"""One step request inside the engine, from submission to its result: typed per-request state."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glimp_ray.engine.session import Session
from glimp_ray.types import FinishReason, GlimpseSignals, SamplingParams, StepRequest, StepResult, StepSignals

DoneCallback = Callable[[StepResult | BaseException], None]


@dataclass(eq=False)
class Sequence:
    """A request in flight.

    Life: waiting → admitted (``session`` matched, ``prefill`` holds the tokens to forward) →
    prefilled (``logits`` of the last position; the glimpse is taken) → decoding (``decoding``;
    one token a turn, ``feed`` is the token the next decode forward takes) → finished
    (``on_done`` called once). A short prefill may instead ride the decode forwards, one token of
    ``to_feed`` a turn.
    """

    request: StepRequest
    on_done: DoneCallback
    submitted: float = field(default_factory=time.perf_counter)
    aborted: bool = False  # the caller went away: stopped at the next turn
    run: Any = None  # the ChainedRun this step belongs to (a run of easy steps), if any
    session: Session | None = None
    # prefill
    prefill: list[int] = field(default_factory=list)
    to_feed: list[int] = field(default_factory=list)
    logits: Any = None  # torch.Tensor of the newest position, [vocab]
    # decoding
    decoding: bool = False
    feed: int = -1
    stops: tuple[str, ...] = ()
    stop_matcher: Callable[[list[int]], bool] | None = None
    sampling: SamplingParams | None = None
    processors: Any = None  # transformers LogitsProcessorList
    generator: Any = None  # torch.Generator
    generated: list[int] = field(default_factory=list)
    max_tokens: int = 0
    # what the result reports
    glimpse: GlimpseSignals | None = None
    probe_prob: float | None = None
    token_entropies: list[float] = field(default_factory=list)  # with GenerateSpec.signals
    token_logprobs: list[float] = field(default_factory=list)
    reused_tokens: int = 0
    prefill_tokens: int = 0
    context_tokens: int = 0
    admitted: float = 0.0
    prefill_start: float = 0.0
    prefill_s: float = 0.0
    decode_start: float = 0.0

    def result(self, text: str, reason: FinishReason, replica: str) -> StepResult:
        """The request's result, now: its tokens, ``text`` and counters, with the glimpse's signals."""
        now = time.perf_counter()
        return StepResult(
            token_ids=list(self.generated),
            text=text,
            finish_reason=reason,
            entropy=self.glimpse.entropy if self.glimpse else None,
            routed=reason == "routed",
            top1_prob=self.glimpse.top1_prob if self.glimpse else None,
            top2_prob=self.glimpse.top2_prob if self.glimpse else None,
            context_tokens=self.context_tokens,
            reused_tokens=self.reused_tokens,
            prefill_tokens=self.prefill_tokens,
            generated_tokens=len(self.generated),
            queue_s=self.admitted - self.submitted,
            prefill_s=self.prefill_s,
            decode_s=now - self.decode_start,
            replica=replica,
            step_signals=StepSignals.of(self.token_entropies, self.token_logprobs),
            probe_prob=self.probe_prob,
        )

    @property
    def live_session(self) -> Session:
        """The session of an admitted request."""
        assert self.session is not None, "the request has not been admitted"
        return self.session

    @property
    def context_len(self) -> int:
        """Tokens this request's row holds: its context and what it generated."""
        return self.context_tokens + len(self.generated)

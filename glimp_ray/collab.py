"""The step loop: glimpse → route → step → stop rules → answer.

Pure async logic over two :class:`~glimp_ray.engine.base.StepClient` pools. Every
thinking step yields one :class:`StepRecord`; the API trace, spans, metrics and the
capacity planner all read these records.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from glimp_ray.engine.base import PromptTooLongError, StepClient
from glimp_ray.policies import LARGE, POLICY_NAMES, SMALL, Route, check_random_p, make_policy
from glimp_ray.types import (
    EntropyKind,
    FinishReason,
    GenerateSpec,
    GlimpseSpec,
    Message,
    SamplingParams,
    StepRequest,
    StepResult,
)

Mode = Literal["fused", "paper"]
AnswerModel = Literal["auto", "small", "large"]
StopReason = Literal["think_end", "eos", "repeat", "budget", "context"]


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
    glimpse_s: float = 0.0
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
            "steps": [s.to_dict() for s in self.steps],
            "answer_record": self.answer_record.to_dict(),
        }


class Collaborator:
    """Runs GlimpRouter's step-wise collaboration between a small and a large pool."""

    def __init__(self, small: StepClient, large: StepClient, params: CollabParams | None = None):
        self.clients: dict[Route, StepClient] = {SMALL: small, LARGE: large}
        self.params = params or CollabParams()

    async def run(
        self,
        messages: Sequence[Message] | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
        **overrides: object,
    ) -> CollabResult:
        """Run one request to completion and return the result."""
        result: CollabResult | None = None
        async for event in self.stream(messages, prompt, request_id, **overrides):
            if isinstance(event, CollabResult):
                result = event
        assert result is not None
        return result

    async def stream(
        self,
        messages: Sequence[Message] | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
        **overrides: object,
    ) -> AsyncGenerator[StepRecord | CollabResult, None]:
        """Yield each thinking step's record as it completes, then the :class:`CollabResult`."""
        params = self.params.replace(**overrides)
        run = _Run(self.clients, params, messages, prompt, request_id or uuid.uuid4().hex)
        try:
            async for event in run.events():
                yield event
        finally:
            await asyncio.shield(run.release())


class _Run:
    """State of one collaboration; lives for a single request."""

    def __init__(
        self,
        clients: dict[Route, StepClient],
        params: CollabParams,
        messages: Sequence[Message] | None,
        prompt: str | None,
        request_id: str,
    ):
        if (messages is None) == (prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        self.clients = clients
        self.params = params
        self.messages = tuple(dict(m) for m in messages) if messages is not None else None
        self.prompt = prompt
        self.request_id = request_id
        self.policy = make_policy(params.policy, params.threshold, params.random_p)
        # Per request: a fixed seed must not give every request the same random routes.
        self.rng = random.Random(f"{params.seed}:{request_id}") if params.seed is not None else random.Random()
        self.transcript = ""
        self.used: set[Route] = set()

    def _session(self, route: Route) -> str:
        return f"{self.request_id}:{route}"

    def _sampling(self, index: int, route: Route) -> SamplingParams:
        seed = None
        if self.params.seed is not None:
            # A distinct, reproducible seed per step and model.
            seed = (self.params.seed * 1_000_003 + index * 2 + (route == LARGE)) % 2**63
        return SamplingParams(self.params.temperature, self.params.top_p, seed)

    def _glimpse(self, threshold: float | None) -> GlimpseSpec:
        return GlimpseSpec(self.params.entropy, self.params.top_k, threshold)

    async def _call(self, route: Route, **kwargs: object) -> StepResult:
        self.used.add(route)
        request = StepRequest(
            session_id=self._session(route),
            messages=self.messages,
            prompt=self.prompt,
            transcript=self.transcript,
            **kwargs,  # type: ignore[arg-type]
        )
        return await self.clients[route].step(request)

    async def _thinking_step(self, index: int, max_tokens: int) -> StepRecord:
        """Glimpse, route and write one step; returns its record."""
        p = self.params
        entropy: float | None = None
        glimpse_s = 0.0
        glimpse: StepResult | None = None
        route: Route | None = None

        if self.policy.needs_glimpse and p.mode == "paper":
            # The reference code: a separate 1-token glimpse, then the step from scratch.
            t0 = time.perf_counter()
            glimpse = await self._call(SMALL, glimpse=self._glimpse(None))
            glimpse_s = time.perf_counter() - t0
            entropy = glimpse.entropy
            route = self.policy(entropy, self.rng)
        elif not self.policy.needs_glimpse:
            route = self.policy(None, self.rng)

        def generate(route: Route) -> GenerateSpec:
            return GenerateSpec(max_tokens, (p.delimiter,), self._sampling(index, route))

        t0 = time.perf_counter()
        if route is None or route == SMALL:
            # Fused: one small call glimpses and, unless routed away, writes the step.
            # The entropy is computed whenever the small model writes (it is free).
            threshold = p.threshold if route is None else None
            result = await self._call(SMALL, glimpse=self._glimpse(threshold), generate=generate(SMALL))
            if result.entropy is not None:
                entropy = result.entropy
            if result.routed:
                glimpse_s += time.perf_counter() - t0
                glimpse = result
                t0 = time.perf_counter()
                result = await self._call(LARGE, generate=generate(LARGE))
                route = LARGE
            else:
                route = SMALL
        else:
            result = await self._call(LARGE, generate=generate(LARGE))
        latency = time.perf_counter() - t0 + glimpse_s
        return _record(index, route, result, entropy, latency, glimpse_s, glimpse)

    async def events(self) -> AsyncIterator[StepRecord | CollabResult]:
        p = self.params
        start = time.perf_counter()
        steps: list[StepRecord] = []
        used_tokens = 0
        stop_reason: StopReason = "budget"
        while used_tokens < p.thinking_budget:
            max_tokens = min(p.step_max_tokens, p.thinking_budget - used_tokens)
            try:
                record = await self._thinking_step(len(steps), max_tokens)
            except PromptTooLongError:
                if not steps:
                    raise  # the prompt itself does not fit: the client's error
                stop_reason = "context"  # the thinking filled a model's context
                break
            repeats = bool(steps) and bool(record.text) and record.text == steps[-1].text
            steps.append(record)
            used_tokens += record.tokens
            self.transcript += record.text
            yield record
            if record.finish_reason in ("think_end", "eos"):
                stop_reason = record.finish_reason  # type: ignore[assignment]
                break
            if repeats:
                # A step repeating the previous one verbatim: the model is looping.
                stop_reason = "repeat"
                break
            if record.finish_reason == "length" and record.tokens < max_tokens:
                # Cut short of its budget: the engine stopped at the end of its context.
                stop_reason = "context"
                break

        answer_route = p.resolved_answer_model
        t0 = time.perf_counter()
        try:
            result = await self._call(
                answer_route,
                close_thinking=True,
                generate=GenerateSpec(p.answer_max_tokens, p.stop, self._sampling(-1, answer_route)),
            )
        except PromptTooLongError:
            if not steps:
                raise
            # The thinking left no room for the answer: an empty answer cut by length.
            result = StepResult(token_ids=[], text="", finish_reason="length")
        answer = _record(-1, answer_route, result, None, time.perf_counter() - t0, 0.0, None)
        yield CollabResult(
            request_id=self.request_id,
            reasoning=self.transcript.rstrip(),
            answer=_before_stop(result.text, p.stop).strip(),
            steps=steps,
            answer_record=answer,
            stop_reason=stop_reason,
            latency_s=time.perf_counter() - start,
            params=p,
        )

    async def release(self) -> None:
        for route in self.used:
            with contextlib.suppress(Exception):
                await self.clients[route].release(self._session(route))


def _before_stop(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to the first stop string, which is left out."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _record(
    index: int,
    route: Route,
    result: StepResult,
    entropy: float | None,
    latency_s: float,
    glimpse_s: float,
    glimpse: StepResult | None,
) -> StepRecord:
    """``glimpse`` is the separate small call (paper mode) or the routed fused call."""
    return StepRecord(
        index=index,
        model=route,
        text=result.text,
        entropy=entropy,
        tokens=result.generated_tokens,
        finish_reason=result.finish_reason,
        latency_s=latency_s,
        glimpse_s=glimpse_s,
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
    )

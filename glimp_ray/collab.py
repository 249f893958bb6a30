"""The step loop: glimpse → route → step → stop rules → answer.

Pure async logic over two :class:`~glimp_ray.engine.base.StepClient` pools. Every
thinking step yields one :class:`StepRecord`; the API trace, spans, metrics and the
capacity planner all read these records.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from glimp_ray.engine.base import EngineError, InvalidRequestError, PromptTooLongError, StepClient
from glimp_ray.params import AnswerModel, CollabParams, Mode
from glimp_ray.policies import (
    LARGE,
    SMALL,
    PostStepPolicy,
    Route,
    engine_threshold,
    make_policy,
    shadow_decisions,
    shadow_reads_steps,
)
from glimp_ray.post_step import write_post_step
from glimp_ray.records import CollabResult, StepRecord, StopReason, record_of
from glimp_ray.step_run import StepRun, joined, repeats, run_steps, step_max_tokens, step_seed
from glimp_ray.types import GenerateSpec, GlimpseSpec, Message, SamplingParams, StepRequest, StepResult

__all__ = ["AnswerModel", "CollabParams", "CollabResult", "Collaborator", "Mode", "StepRecord", "StopReason"]


class Collaborator:
    """Runs GlimpRouter's step-wise collaboration between a small and a large pool."""

    def __init__(self, small: StepClient, large: StepClient, params: CollabParams | None = None):
        self.clients: dict[Route, StepClient] = {SMALL: small, LARGE: large}
        self.params = params or CollabParams()
        # The router's online τ (glimp_ray.tau_control): read at each step's glimpse unless the
        # request sets its own threshold.
        self.tau: Callable[[], float] | None = None

    async def run(
        self,
        messages: Sequence[Message] | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        **overrides: object,
    ) -> CollabResult:
        """Run one request to completion and return the result."""
        result: CollabResult | None = None
        async for event in self.stream(messages, prompt, request_id, tools, **overrides):
            if isinstance(event, CollabResult):
                result = event
        assert result is not None
        return result

    async def stream(
        self,
        messages: Sequence[Message] | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        **overrides: object,
    ) -> AsyncGenerator[StepRecord | CollabResult, None]:
        """Yield each thinking step's record as it completes, then the :class:`CollabResult`;
        ``tools`` (OpenAI's function tools) go to every call, for the models' chat templates."""
        params = self.params.replace(**overrides)
        tau = self.tau if overrides.get("threshold") is None else None
        run = _Run(self.clients, params, messages, prompt, request_id or uuid.uuid4().hex, tau, tools)
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
        tau: Callable[[], float] | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ):
        if (messages is None) == (prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if tools and messages is None:
            raise ValueError("tools need messages (a chat template renders them)")
        self.clients = clients
        self.params = params
        self.messages = tuple(dict(m) for m in messages) if messages is not None else None
        self.tools = tuple(tools) if tools else None
        self.prompt = prompt
        self.request_id = request_id
        self.rules = params.rules
        self.policy = make_policy(
            params.policy, params.threshold, params.random_p, self.rules.large_at_threshold, params.cues
        )
        # The small model's step signals: for a post-step policy, or a shadow one reading them.
        self.step_signals = self.policy.post_step or shadow_reads_steps(params.shadow)
        self.tau = tau if params.policy == "entropy" else None
        # The seed alone, not the request id (which the API and batch jobs draw at random), so
        # a seeded request routes the same way every time it is sent.
        self.rng = random.Random(params.seed)
        self.transcript = ""
        self.used: set[Route] = set()
        self.run: AsyncIterator[StepResult] | None = None  # the small pool's open run of easy steps
        self.run_tau = 0.0

    def _session(self, route: Route) -> str:
        return f"{self.request_id}:{route}"

    def _sampling(self, index: int, route: Route) -> SamplingParams:
        seed = step_seed(self.params.seed, index, route == LARGE)
        p = self.params
        return SamplingParams(p.temperature, p.top_p, seed, p.sampling_top_k, p.min_p)

    def _glimpse(self, threshold: float | None) -> GlimpseSpec:
        """The glimpse to ask for: every signal is measured; with ``threshold`` the engine routes a
        fused glimpse on the policy's signal, as the policy would."""
        signal = self.policy.signal or "entropy"
        if threshold is not None:
            threshold = engine_threshold(threshold, self.rules.large_at_threshold, signal)
        return GlimpseSpec(self.params.entropy, self.params.top_k, threshold, signal)

    def _joined(self, record: StepRecord) -> str:
        return joined(record.text, self.params.delimiter, self.rules)

    def _answer_context(self) -> str:
        """The transcript the answer model sees before the think-end marker and blank line the
        engine adds: as written, or (reference rule) the steps joined by the delimiter and a
        newline."""
        if not self.rules.newline_before_think_end:
            return self.transcript
        return self.transcript.removesuffix(self.params.delimiter) + "\n"

    async def _call(self, route: Route, transcript: str | None = None, **kwargs: object) -> StepResult:
        self.used.add(route)
        request = StepRequest(
            session_id=self._session(route),
            messages=self.messages,
            tools=self.tools,
            prompt=self.prompt,
            transcript=self.transcript if transcript is None else transcript,
            **kwargs,  # type: ignore[arg-type]
        )
        return await self.clients[route].step(request)

    async def _post_step(self, index: int, policy: PostStepPolicy, generate: Any) -> StepRecord:
        """A post-step policy's step: the small model writes it, its signal keeps it or the large
        model rewrites it (:mod:`glimp_ray.post_step`)."""
        p = self.params

        async def call(route: Route, transcript: str, glimpse: Any, spec: Any, continuation: str) -> StepResult:
            return await self._call(route, transcript, glimpse=glimpse, generate=spec, continuation=continuation)

        t0 = time.perf_counter()
        route, result, decided = await write_post_step(
            call, policy, p, self.transcript, generate, lambda text: joined(text, p.delimiter, self.rules)
        )
        draft = decided.draft
        shadow = shadow_decisions(
            p.shadow, draft.glimpse, self.rules.large_at_threshold, draft.step_signals, draft.text, p.cues
        )
        record = record_of(
            index, route, result, draft.entropy, time.perf_counter() - t0, 0.0, None, None, draft, p.policy, shadow
        )
        return decided.annotate(record)

    async def _streamed(self, index: int, used: int, previous: str | None, tau: float) -> StepResult | None:
        """The next step of the small pool's run of easy steps, opening one if none is open;
        ``None`` when the run ended where this loop goes on, or the pool failed it (the caller
        then makes the step its own call, with that call's retries)."""
        if self.run is None:
            p = self.params
            request = StepRequest(
                session_id=self._session(SMALL),
                messages=self.messages,
                tools=self.tools,
                prompt=self.prompt,
                transcript=self.transcript,
                glimpse=self._glimpse(tau),
            )
            spec = StepRun(
                index, used, p.thinking_budget, p.step_max_tokens, p.delimiter, self.rules,
                p.temperature, p.top_p, p.seed, previous, p.sampling_top_k, p.min_p, self.step_signals,
            )  # fmt: skip
            client = self.clients[SMALL]
            opened = getattr(client, "run_steps", None)
            self.used.add(SMALL)
            self.run = opened(request, spec) if opened is not None else run_steps(client, request, spec)
            self.run_tau = tau
        try:
            result = await anext(self.run)
        except StopAsyncIteration:
            self.run = None
            return None
        except InvalidRequestError:
            await self.close_run()
            raise
        except EngineError:
            await self.close_run()
            return None
        if result.routed:
            await self.close_run()
        return result

    async def close_run(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            with contextlib.suppress(Exception):
                await run.aclose()  # type: ignore[attr-defined]

    async def _thinking_step(
        self, index: int, max_tokens: int, used: int = 0, previous: str | None = None
    ) -> StepRecord:
        """Glimpse, route and write one step; returns its record."""
        p = self.params
        entropy: float | None = None
        glimpse_s = 0.0
        glimpse: StepResult | None = None
        signals: StepResult | None = None  # the call whose glimpse this step was routed on
        route: Route | None = None
        tau = self.tau() if self.tau is not None else p.threshold
        if self.run is not None:
            tau = self.run_tau  # an open run keeps the τ it was opened with
        policy = self.policy
        if self.tau is not None:
            policy = make_policy(p.policy, tau, p.random_p, self.rules.large_at_threshold)

        def generate(route: Route) -> GenerateSpec:
            signals = route == SMALL and self.step_signals
            return GenerateSpec(max_tokens, (p.delimiter,), self._sampling(index, route), signals)

        if isinstance(policy, PostStepPolicy):
            return await self._post_step(index, policy, generate)

        if policy.needs_glimpse and p.mode == "paper":
            # The reference code: a separate 1-token glimpse, then the step from scratch.
            t0 = time.perf_counter()
            glimpse = await self._call(SMALL, glimpse=self._glimpse(None))
            glimpse_s = time.perf_counter() - t0
            entropy, signals = glimpse.entropy, glimpse
            route = policy(glimpse.glimpse, self.rng)
        elif not policy.needs_glimpse:
            route = policy(None, self.rng)

        t0 = time.perf_counter()
        if route is None or route == SMALL:
            # Fused: one small call glimpses and, unless routed away, writes the step.
            # The entropy is computed whenever the small model writes (it is free).
            threshold = tau if route is None else None
            streamed = None
            if route is None and p.streaming_glimpse:
                streamed = await self._streamed(index, used, previous, tau)
            if streamed is not None:
                result = streamed
            else:
                result = await self._call(SMALL, glimpse=self._glimpse(threshold), generate=generate(SMALL))
            if result.entropy is not None:
                entropy, signals = result.entropy, result
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
        routed_on = tau if policy.signal is not None else None
        # Shadow policies decide from the same glimpse, streamed steps included: no model work.
        glimpsed = signals.glimpse if signals is not None else None
        wrote = result if route == SMALL else None  # post-step shadows read a step the small model wrote
        shadow = shadow_decisions(
            p.shadow,
            glimpsed,
            self.rules.large_at_threshold,
            wrote.step_signals if wrote else None,
            wrote.text if wrote else None,
            p.cues,
        )
        return record_of(
            index, route, result, entropy, latency, glimpse_s, glimpse, routed_on, signals, p.policy, shadow
        )

    async def events(self) -> AsyncIterator[StepRecord | CollabResult]:
        p = self.params
        start = time.perf_counter()
        steps: list[StepRecord] = []
        used_tokens = 0
        stop_reason: StopReason = "budget"
        while used_tokens < p.thinking_budget:
            max_tokens = step_max_tokens(p.step_max_tokens, p.thinking_budget, used_tokens, self.rules)
            previous = steps[-1].text if steps else None
            try:
                record = await self._thinking_step(len(steps), max_tokens, used_tokens, previous)
            except PromptTooLongError:
                if not steps:
                    raise  # the prompt itself does not fit: the client's error
                stop_reason = "context"  # the thinking filled a model's context
                break
            record.text = self._joined(record)  # what the transcript, the stream and the trace hold
            looping = repeats(record.text, previous, len(steps), self.rules)
            steps.append(record)
            used_tokens += record.tokens
            self.transcript += record.text
            yield record
            if record.finish_reason in ("think_end", "eos"):
                stop_reason = record.finish_reason  # type: ignore[assignment]
                break
            if looping:
                # A step repeating the previous one verbatim: the model is looping.
                stop_reason = "repeat"
                break
            if record.finish_reason == "length" and record.tokens < max_tokens:
                # Cut short of its budget: the engine stopped at the end of its context.
                stop_reason = "context"
                break

        await self.close_run()  # the thinking ended here, whatever the small pool would have written next
        answer_route = p.resolved_answer_model
        t0 = time.perf_counter()
        try:
            self.transcript = self._answer_context()
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
        answer = record_of(-1, answer_route, result, None, time.perf_counter() - t0, 0.0, None)
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
        await self.close_run()
        for route in self.used:
            with contextlib.suppress(Exception):
                await self.clients[route].release(self._session(route))


def _before_stop(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to the first stop string, which is left out."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text

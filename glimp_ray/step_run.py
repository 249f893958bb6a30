"""Streaming glimpse: consecutive easy steps in one call to the small pool.

In fused mode every easy step used to be its own round trip to the small pool. A run goes on
instead: after each step the pool glimpses the next one itself and writes it while its
first-token entropy stays within τ, streaming each step back as it completes. It stops after a
step routed away (nothing kept: the large model writes it), at the end of thinking, a repeat, a
step cut short by the context, or the thinking budget — the loop's own stop rules, shared here
with :mod:`glimp_ray.collab` so both decide alike (and if they ever differ, the loop closes the
run or opens the next one, with the same output).

Runs are served where the engine lives (:meth:`glimp_ray.step_server.StepServer.run_steps`, a
Serve streaming call); in-process clients run the same loop over their ``step``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from glimp_ray.engine.base import StepClient
from glimp_ray.params import LoopRules
from glimp_ray.types import GenerateSpec, SamplingParams, StepRequest, StepResult


@dataclass(frozen=True)
class StepRun:
    """How a run goes on after its first step: the loop's step shape, budget and stop rules."""

    first_index: int  # the index of the run's first step
    used_tokens: int  # thinking tokens written before it
    thinking_budget: int
    step_max_tokens: int
    delimiter: str
    rules: LoopRules
    temperature: float | None  # sampling (None: the model's default)
    top_p: float | None
    seed: int | None
    previous_text: str | None  # the step before the run, as the transcript holds it (repeat rule)
    sampling_top_k: int | None = None
    min_p: float | None = None
    signals: bool = False  # each step's StepSignals (a shadow post-step policy reads them)

    def sampling(self, index: int) -> SamplingParams:
        """Step ``index``'s sampling, seeded as the loop seeds it."""
        seed = step_seed(self.seed, index, False)
        return SamplingParams(self.temperature, self.top_p, seed, self.sampling_top_k, self.min_p)


def step_seed(seed: int | None, index: int, large: bool) -> int | None:
    """A distinct, reproducible sampling seed per step and model (``index`` -1: the answer)."""
    if seed is None:
        return None
    return (seed * 1_000_003 + index * 2 + large) % 2**63


def step_max_tokens(step_max: int, budget: int, used: int, rules: LoopRules) -> int:
    """A step's ``max_tokens``: the step's cap, clipped to the budget left where the rules say."""
    return min(step_max, budget - used) if rules.clip_to_budget else step_max


def joined(text: str, delimiter: str, rules: LoopRules) -> str:
    """A step's text as the transcript holds it: as written, or (reference rule) always followed
    by the delimiter, also when ``max_tokens`` cut it."""
    if rules.delimiter_after_every_step and not text.endswith(delimiter):
        return text + delimiter
    return text


def repeats(text: str, previous: str | None, index: int, rules: LoopRules) -> bool:
    """A step repeating the one before it verbatim: the model is looping."""
    return index >= rules.first_repeat_step and bool(text) and text == previous


def ends_thinking(
    result: StepResult, text: str, previous: str | None, index: int, max_tokens: int, rules: LoopRules
) -> bool:
    """Whether the thinking stops after this (unrouted) step, budget aside."""
    return (
        result.finish_reason in ("think_end", "eos")
        or repeats(text, previous, index, rules)
        or (result.finish_reason == "length" and result.generated_tokens < max_tokens)  # the context is full
    )


class RunCursor:
    """Where a run stands: the next step's request after each finished step, or ``None`` where
    the run ends. Engines that keep a run inside their step loop call :meth:`advance` there."""

    def __init__(self, request: StepRequest, run: StepRun):
        self.request, self.run = request, run
        self.transcript, self.index, self.used = request.transcript, run.first_index, run.used_tokens
        self.previous = run.previous_text
        self.max_tokens = 0
        self.ended = False

    def first(self) -> StepRequest | None:
        """The run's first step (its glimpse carries τ); ``None`` when the budget is spent."""
        return self._next()

    def advance(self, result: StepResult) -> StepRequest | None:
        """After a finished step: the next step's request, or ``None`` (and :attr:`ended`) when the
        run ends with it."""
        rules, delimiter = self.run.rules, self.run.delimiter
        text = joined(result.text, delimiter, rules)
        if result.routed or ends_thinking(result, text, self.previous, self.index, self.max_tokens, rules):
            self.ended = True
            return None
        self.transcript += text
        self.index += 1
        self.used += result.generated_tokens
        self.previous = text
        return self._next()

    def _next(self) -> StepRequest | None:
        run = self.run
        if self.used >= run.thinking_budget:
            self.ended = True
            return None
        self.max_tokens = step_max_tokens(run.step_max_tokens, run.thinking_budget, self.used, run.rules)
        sampling = run.sampling(self.index)
        return dataclasses.replace(
            self.request,
            transcript=self.transcript,
            generate=GenerateSpec(self.max_tokens, (run.delimiter,), sampling, run.signals),
        )


async def run_steps(client: StepClient, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
    """Fused steps on ``client`` from ``request`` (its glimpse carries τ) while each goes on, one
    call per step (for clients without a run of their own)."""
    cursor = RunCursor(request, run)
    step = cursor.first()
    while step is not None:
        result = await client.step(step)
        yield result
        step = cursor.advance(result)

"""Streaming glimpse (the default) when a run of easy steps fails or is left early, without Ray:
scripted engines serving runs as step_run's run over their ``step``, and the HF engine's run
inside its step loop. (Through a pool's streaming call: tests/deployments/test_pool_client.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from glimp_ray.collab import Collaborator, CollabParams, CollabResult
from glimp_ray.engine.base import EngineError, InvalidRequestError
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.engine.recording import RecordingClient
from glimp_ray.step_run import StepRun, run_steps
from glimp_ray.types import StepRequest, StepResult

MESSAGES = [{"role": "user", "content": "What is 6 x 7?"}]
ALL_EASY = [0.5, 0.2, 0.9, 0.1, 0.3]  # under τ = 1.0: one run writes every step
MIXED = [0.5, 2.0, 0.9, 0.3, 0.1]  # step 1 routed large

Fail = Callable[[int, StepRequest], BaseException | None]


class RunningEngine(ScriptedEngine):
    """A scripted engine serving runs of easy steps itself, as the real engines do: ``runs`` holds,
    for each run opened, the indices (in ``calls``) of the steps it streamed back, and
    ``closed_runs`` counts the runs whose caller closed them before their end."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.runs: list[list[int]] = []
        self.closed_runs = 0

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        self.runs.append([])
        try:
            async for result in run_steps(self, request, run):
                self.runs[-1].append(len(self.calls) - 1)
                yield result
        except GeneratorExit:
            self.closed_runs += 1
            raise


def pair(entropies: list[float], fail: Fail | None = None) -> tuple[RunningEngine, ScriptedEngine]:
    last = len(entropies) - 1
    steps = [ScriptedStep(f"s{i}\n\n", e) for i, e in enumerate(entropies[:-1])]
    small = RunningEngine("small", [*steps, ScriptedStep(f"s{last}", entropies[-1], "think_end")], fail=fail)
    large = ScriptedEngine(
        "large", [*(ScriptedStep(f"L{i}\n\n") for i in range(last)), ScriptedStep(f"L{last}", 0.0, "think_end")]
    )
    return small, large


def collaborate(small: Any, large: Any, **overrides: Any) -> CollabResult:
    collab = Collaborator(small, large, CollabParams(threshold=1.0))
    return asyncio.run(collab.run(MESSAGES, request_id="r", **overrides))


def steps_of(result: CollabResult) -> list[tuple[str, str, float | None, str]]:
    return [(s.model, s.text, s.entropy, s.finish_reason) for s in result.steps]


def fail_once_at(index: int) -> Fail:
    return lambda i, request: EngineError("engine step loop failed") if i == index else None


def test_an_engine_error_mid_run_makes_that_step_a_call_of_its_own() -> None:
    clean_small, clean_large = pair(ALL_EASY)
    clean = collaborate(clean_small, clean_large)
    assert clean_small.runs == [[0, 1, 2, 3, 4]]  # one run writes every step
    small, large = pair(ALL_EASY, fail_once_at(1))  # the run's second step fails
    result = collaborate(small, large)
    assert steps_of(result) == steps_of(clean) and result.reasoning == clean.reasoning
    assert result.answer == clean.answer and result.stop_reason == "think_end"
    # The run ended at its failed step (call 1); the loop made that step a call of its own (call 2,
    # the same step, glimpsed on τ as the run would), then opened a new run at the next step.
    assert small.runs == [[0], [3, 4, 5]]
    assert small.calls[2].transcript == small.calls[1].transcript == "s0\n\n"
    assert small.calls[2].glimpse is not None and small.calls[2].glimpse.threshold == 1.0
    assert small.released == ["r:small"] and large.released == ["r:large"]


def test_the_step_made_after_a_failed_run_still_routes_on_its_glimpse() -> None:
    clean = collaborate(*pair(MIXED))
    small, large = pair(MIXED, fail_once_at(1))  # fails the step that routes large
    result = collaborate(small, large)
    assert [s.model for s in result.steps] == ["small", "large", "small", "small", "small"]
    assert steps_of(result) == steps_of(clean) and result.answer == clean.answer
    assert small.runs == [[0], [3, 4, 5]]  # the call of its own (2) was routed; a new run from step 2
    assert [c.transcript for c in large.calls[:1]] == ["s0\n\n"]


def test_a_step_failing_again_as_a_call_of_its_own_fails_the_request() -> None:
    failing = lambda i, request: EngineError("engine step loop failed") if i >= 1 else None  # noqa: E731
    small, large = pair(ALL_EASY, failing)
    with pytest.raises(EngineError, match="step loop failed"):
        collaborate(small, large)
    assert len(small.calls) == 3 and small.runs == [[0]]  # the run, then the step once on its own
    assert small.released == ["r:small"]


def test_a_refused_step_mid_run_is_the_clients_error_not_retried() -> None:
    refuse = lambda i, request: InvalidRequestError("refused") if i == 1 else None  # noqa: E731
    small, large = pair(ALL_EASY, refuse)
    with pytest.raises(InvalidRequestError, match="refused"):
        collaborate(small, large)
    assert len(small.calls) == 2 and large.calls == []
    assert small.released == ["r:small"]


def test_a_client_gone_mid_run_closes_the_run_and_releases_the_session() -> None:
    small, large = pair(ALL_EASY)

    async def read_one() -> None:
        stream = Collaborator(small, large, CollabParams(threshold=1.0)).stream(MESSAGES, request_id="r")
        await anext(stream)  # the first step's record, the run still open behind it
        await stream.aclose()  # the client went away

    asyncio.run(read_one())
    assert small.runs == [[0]] and small.closed_runs == 1  # the run was closed, not read on
    assert len(small.calls) == 1 and large.calls == []
    assert small.released == ["r:small"]


def test_a_cancelled_request_stops_its_run() -> None:
    started = asyncio.Event()
    stopped: list[str] = []

    class Hanging(RunningEngine):
        async def step(self, request: StepRequest) -> StepResult:
            if self.calls:
                self.calls.append(request)
                started.set()
                try:
                    await asyncio.sleep(60)  # the run's second step never finishes
                except asyncio.CancelledError:
                    stopped.append(request.transcript)
                    raise
            return await super().step(request)

    small, large = pair(ALL_EASY)
    hanging = Hanging("small", small.steps)

    async def cancel_mid_run() -> None:
        task = asyncio.ensure_future(Collaborator(hanging, large, CollabParams(threshold=1.0)).run(MESSAGES))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_mid_run())
    assert hanging.runs == [[0]] and len(hanging.calls) == 2
    assert stopped == ["s0\n\n"]  # the step in flight was cancelled, not left running
    assert len(hanging.released) == 1


def test_a_recording_client_passes_a_run_through_and_keeps_its_steps() -> None:
    small, large = pair(ALL_EASY)
    recording = RecordingClient(small)
    result = collaborate(recording, large)
    assert small.runs == [[0, 1, 2, 3, 4]]  # the wrapped engine's own run, not one call per step
    assert [r.text for r in recording.results] == [s.text for s in result.steps]


def test_a_recording_client_over_a_client_without_runs_records_each_step() -> None:
    small, large = pair(ALL_EASY)
    plain = ScriptedEngine("small", small.steps)
    recording = RecordingClient(plain)
    result = collaborate(recording, large)
    assert len(plain.calls) == len(result.steps) == len(recording.results) == 5
    assert [r.text for r in recording.results] == [s.text for s in result.steps]


# --- the HF engine's run inside its step loop -----------------------------------------------


def test_a_step_loop_failure_mid_run_on_the_hf_engine(make_engine: Any) -> None:
    """The HF engine's step loop fails while a run's second step decodes: that step fails (the
    engine recovers), the loop writes it as a call of its own, and the request ends as a clean
    run would (greedy)."""
    params = CollabParams(temperature=0, delimiter=" ", step_max_tokens=24, thinking_budget=100, answer_max_tokens=8)
    messages = ({"role": "user", "content": "What is 6 times 7?"},)
    clean = asyncio.run(Collaborator(make_engine("small"), make_engine("large"), params).run(messages, threshold=1e9))
    engine = make_engine("small")
    run_once = engine.run_once
    failed: list[str] = []

    def failing_once() -> None:
        running = [seq.request.transcript for seq in engine.scheduler.running]
        if not failed and any(running):  # a later step of the run is decoding
            failed.append(running[0])
            raise RuntimeError("injected: the forward failed")
        run_once()

    engine.run_once = failing_once
    small = RecordingClient(engine)
    result = asyncio.run(Collaborator(small, make_engine("large"), params).run(messages, threshold=1e9))
    assert failed and len(clean.steps) > 2
    assert [(s.model, s.text, s.tokens) for s in result.steps] == [(s.model, s.text, s.tokens) for s in clean.steps]
    assert result.answer == clean.answer and result.stop_reason == clean.stop_reason
    assert engine.queued == 0 and not any(s.busy for s in engine.sessions)

"""Pool clients without Ray replicas: fake handles that time out, die or answer, one call or a
streamed run of easy steps (streaming glimpse) at a time; and the loop over them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("ray")
from ray.exceptions import ActorDiedError, RayActorError, TaskCancelledError  # noqa: E402

from glimp_ray.collab import Collaborator, CollabParams, CollabResult  # noqa: E402
from glimp_ray.engine.base import InvalidRequestError, StepRejected  # noqa: E402
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep  # noqa: E402
from glimp_ray.params import PRESET_RULES  # noqa: E402
from glimp_ray.pool_clients import FallbackStepClient, PoolUnavailableError, ServeStepClient  # noqa: E402
from glimp_ray.step_run import StepRun, run_steps  # noqa: E402
from glimp_ray.types import GenerateSpec, GlimpseSpec, StepRequest, StepResult  # noqa: E402

REQUEST = StepRequest("r1:large", prompt="hi", generate=GenerateSpec(4))


class FakeHandle:
    """Mimics ``handle.options(session_id=..., _by_reference=False).step.remote(request)``."""

    def __init__(self, behaviour: list[str], engine: Any = None, runs: list[tuple[str, int]] | None = None) -> None:
        self.behaviour = behaviour
        self.engine = engine or ScriptedEngine("x", [ScriptedStep("ok ")])
        self.runs = runs or []  # each streamed run's (action, after how many steps)
        self.streams: list[FakeStream] = []
        self.sessions: list[str] = []
        self.cancelled = 0
        self.transports: list[bool] = []
        self.reader: asyncio.Task[Any] | None = None  # the task a ``cancel_caller`` call cancels

    def options(self, session_id: str, _by_reference: bool = True, stream: bool = False) -> FakeHandle:
        self.sessions.append(session_id)
        self.transports.append(_by_reference)
        return self

    @property
    def run_steps(self) -> FakeRuns:
        return FakeRuns(self)

    @property
    def release(self) -> Any:
        engine = self.engine

        class Release:
            def remote(self, session_id: str) -> Any:
                return engine.release(session_id)

        return Release()

    @property
    def step(self) -> FakeHandle:
        return self

    def remote(self, request: StepRequest) -> Any:
        action = self.behaviour.pop(0) if self.behaviour else "ok"
        handle = self

        class Response:
            def __await__(self) -> Any:
                return self._run().__await__()

            async def _run(self) -> Any:
                await asyncio.sleep(0)  # a remote call suspends its caller
                if action == "die":
                    raise ActorDiedError()
                if action == "hang":
                    await asyncio.sleep(60)
                if action == "cancel_caller":
                    assert handle.reader is not None
                    handle.reader.cancel()  # the caller's cancel arrives as the answer does
                return await handle.engine.step(request)

            def cancel(self) -> None:
                handle.cancelled += 1

        return Response()


class FakeRuns:
    """``handle.options(..., stream=True).run_steps``: ``remote`` opens a :class:`FakeStream`."""

    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle

    def remote(self, request: StepRequest, run: StepRun) -> FakeStream:
        action, after = self.handle.runs.pop(0) if self.handle.runs else ("ok", 0)
        stream = FakeStream(run_steps(self.handle.engine, request, run), action, after, self.handle)
        self.handle.streams.append(stream)
        return stream


class FakeStream:
    """Mimics Serve's DeploymentResponseGenerator over the replica's run (step_run's run on the
    handle's engine): after ``after`` steps it hangs, dies (``die``, ``gone``: the actor or its
    task), is cancelled by Serve (``task_cancelled``), sends a refusal (``reject``) or, as it sends
    the next step, the reading task is cancelled (``cancel_caller``)."""

    def __init__(self, steps: AsyncIterator[StepResult], action: str, after: int, handle: FakeHandle) -> None:
        self.steps, self.action, self.after, self.handle = steps, action, after, handle
        self.sent = 0
        self.cancelled = 0

    async def __anext__(self) -> StepResult | StepRejected:
        await asyncio.sleep(0)  # waiting for the replica suspends the reader
        if self.sent == self.after:
            if self.action == "cancel_caller":
                assert self.handle.reader is not None
                self.handle.reader.cancel()
            if self.action == "hang":
                await asyncio.sleep(60)
            if self.action == "die":
                raise ActorDiedError()
            if self.action == "gone":
                raise RayActorError()
            if self.action == "task_cancelled":
                raise TaskCancelledError()
            if self.action == "reject":
                self.sent += 1
                return StepRejected.of(InvalidRequestError("the prompt is empty"))
        item = await self.steps.__anext__()
        self.sent += 1
        return item

    def cancel(self) -> None:
        self.cancelled += 1


def test_session_is_set_on_every_call_and_dead_replicas_are_retried() -> None:
    handle = FakeHandle(["die", "die", "ok"])
    result = asyncio.run(ServeStepClient(handle, "large", retries=2).step(REQUEST))
    assert handle.transports == [False, False, False]  # every call over gRPC
    assert result.text == "ok "
    assert handle.sessions == ["r1:large"] * 3


def test_pool_unavailable_after_retries_and_on_timeout() -> None:
    with pytest.raises(PoolUnavailableError, match="large pool is unavailable"):
        asyncio.run(ServeStepClient(FakeHandle(["die"] * 3), "large", retries=2).step(REQUEST))
    hanging = FakeHandle(["hang"])
    with pytest.raises(PoolUnavailableError, match="did not answer within 0.05 s"):
        asyncio.run(ServeStepClient(hanging, "large", timeout_s=0.05).step(REQUEST))
    assert hanging.cancelled == 1


def test_fallback_to_the_small_pool_is_marked() -> None:
    large = ServeStepClient(FakeHandle(["die"]), "large", retries=0)
    small_handle = FakeHandle([], ScriptedEngine("small", [ScriptedStep("small step ")]))
    client = FallbackStepClient(large, ServeStepClient(small_handle, "small"))
    result = asyncio.run(client.step(REQUEST))
    assert result.fell_back and result.text == "smal"  # max_tokens=4
    assert small_handle.sessions == ["r1:small"]  # the small pool's own session for the request


def test_actor_calls_when_asked() -> None:
    handle = FakeHandle(["ok"])
    asyncio.run(ServeStepClient(handle, "large", transport="actor").step(REQUEST))
    assert handle.transports == [True]
    with pytest.raises(ValueError, match="transport"):
        ServeStepClient(handle, "large", transport="http")


# --- runs of easy steps (streaming glimpse) -------------------------------------------------

MESSAGES = [{"role": "user", "content": "What is 6 x 7?"}]
EASY = [ScriptedStep(f"s{i}\n\n", 0.5) for i in range(4)] + [ScriptedStep("s4", 0.5, "think_end")]
RUN = StepRun(0, 0, 1000, 64, "\n\n", PRESET_RULES["glimp"], 0.0, 1.0, None, None)
RUN_REQUEST = StepRequest("r:small", tuple(MESSAGES), glimpse=GlimpseSpec(threshold=1.0))


def small_pool(runs: list[tuple[str, int]], timeout_s: float = 30.0) -> tuple[ServeStepClient, FakeHandle]:
    handle = FakeHandle([], ScriptedEngine("small", EASY), runs)
    return ServeStepClient(handle, "small", timeout_s=timeout_s), handle


async def read(steps: AsyncIterator[StepResult], into: list[StepResult]) -> None:
    async for result in steps:
        into.append(result)


def test_a_run_streams_each_step_as_one_call() -> None:
    client, handle = small_pool([])
    got: list[StepResult] = []
    asyncio.run(read(client.run_steps(RUN_REQUEST, RUN), got))
    assert [r.text for r in got] == ["s0\n\n", "s1\n\n", "s2\n\n", "s3\n\n", "s4"]
    assert len(handle.streams) == 1 and handle.streams[0].cancelled == 0  # read to its end
    assert handle.sessions == ["r:small"] and handle.transports == [False]


@pytest.mark.parametrize(
    ("action", "error"),
    [("hang", "did not answer within 0.1 s"), ("die", "unavailable: ActorDiedError"), ("gone", "RayActorError")],
)
def test_a_run_that_times_out_or_loses_its_replica_is_pool_unavailable(action: str, error: str) -> None:
    client, handle = small_pool([(action, 2)], timeout_s=0.1)
    got: list[StepResult] = []
    with pytest.raises(PoolUnavailableError, match=error):
        asyncio.run(read(client.run_steps(RUN_REQUEST, RUN), got))
    assert [r.text for r in got] == ["s0\n\n", "s1\n\n"]  # the steps before it were streamed back
    assert handle.streams[0].cancelled == 1  # the run is stopped on the replica (if it is still there)


def test_a_run_closed_early_or_cancelled_is_cancelled_on_the_replica() -> None:
    client, handle = small_pool([("ok", 0), ("hang", 1)])

    async def close_after_one() -> None:
        steps: Any = client.run_steps(RUN_REQUEST, RUN)
        await anext(steps)
        await steps.aclose()  # the loop stopped reading

    async def cancel_while_waiting() -> None:
        task = asyncio.ensure_future(read(client.run_steps(RUN_REQUEST, RUN), []))
        while not handle.streams[1:] or handle.streams[1].sent < 1:
            await asyncio.sleep(0)
        task.cancel()  # as the first step arrives, or while the next one is waited for
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(close_after_one())
    assert handle.streams[0].sent == 1 and handle.streams[0].cancelled == 1
    asyncio.run(cancel_while_waiting())
    assert handle.streams[1].cancelled == 1


@pytest.mark.parametrize(
    ("steps", "last"),
    [(EASY, "think_end"), ([ScriptedStep("s0\n\n", 0.5), ScriptedStep("s1\n\n", 2.0)], "routed")],
)
def test_a_run_closed_after_its_last_step_is_not_cancelled(steps: list[ScriptedStep], last: str) -> None:
    """The loop stops reading at the step a run ends with (the end of thinking, or routed away);
    the replica's run ended there too: no cancel is sent for it."""
    handle = FakeHandle([], ScriptedEngine("small", steps))
    client = ServeStepClient(handle, "small")

    async def read_to_the_last_step() -> list[StepResult]:
        run: Any = client.run_steps(RUN_REQUEST, RUN)
        got = [await anext(run)]
        while got[-1].finish_reason != last:
            got.append(await anext(run))
        await run.aclose()  # as the loop does: it never asks past the last step
        return got

    got = asyncio.run(read_to_the_last_step())
    assert got[-1].finish_reason == last and handle.streams[0].cancelled == 0


def test_a_run_serve_cancelled_is_a_cancellation_and_a_refusal_the_clients_error() -> None:
    client, handle = small_pool([("task_cancelled", 1), ("reject", 1)])
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(read(client.run_steps(RUN_REQUEST, RUN), []))
    with pytest.raises(InvalidRequestError, match="the prompt is empty"):
        asyncio.run(read(client.run_steps(RUN_REQUEST, RUN), []))
    assert [s.cancelled for s in handle.streams] == [1, 1]


def collaborate(small: ServeStepClient) -> CollabResult:
    large = ScriptedEngine("large", [ScriptedStep("L\n\n")])
    return asyncio.run(Collaborator(small, large, CollabParams(threshold=1.0)).run(MESSAGES, request_id="r"))


@pytest.mark.parametrize("action", ["hang", "die", "gone"])
def test_the_loop_makes_the_step_of_a_failed_run_a_call_of_its_own(action: str) -> None:
    clean = collaborate(small_pool([])[0])
    client, handle = small_pool([(action, 2)], timeout_s=0.1)
    result = collaborate(client)
    assert [(s.model, s.text) for s in result.steps] == [(s.model, s.text) for s in clean.steps]
    assert result.reasoning == clean.reasoning == "s0\n\ns1\n\ns2\n\ns3\n\ns4"
    assert result.answer == clean.answer and result.stop_reason == "think_end"
    first, second = handle.streams
    # The failed run streamed 2 steps; step 2 was a call of its own; a new run wrote steps 3 and 4.
    assert (first.sent, first.cancelled) == (2, 1)
    assert (second.sent, second.cancelled) == (2, 0)  # read to its last step: nothing to cancel
    step_2 = [c for c in handle.engine.calls if c.transcript == "s0\n\ns1\n\n"]
    assert len(step_2) == 1 and step_2[0].glimpse is not None and step_2[0].glimpse.threshold == 1.0


def test_a_client_gone_mid_run_cancels_the_run_on_the_replica() -> None:
    client, handle = small_pool([])

    async def read_one() -> None:
        large = ScriptedEngine("large", [ScriptedStep("L\n\n")])
        stream = Collaborator(client, large, CollabParams(threshold=1.0)).stream(MESSAGES, request_id="r")
        await anext(stream)
        await stream.aclose()

    asyncio.run(read_one())
    assert len(handle.streams) == 1 and handle.streams[0].cancelled == 1
    assert handle.sessions[-1] == "r:small"  # the session's release went to its replica


def test_a_cancel_arriving_with_a_steps_answer_is_not_lost() -> None:
    """The client goes away just as the pool answers: the request is still cancelled (before the
    fix, ``asyncio.wait_for`` returned the answer, dropped the cancel, and the loop went on)."""
    handle = FakeHandle(["cancel_caller"])
    client = ServeStepClient(handle, "large")

    async def two_steps() -> None:
        await client.step(REQUEST)
        await client.step(REQUEST)

    async def main() -> None:
        handle.reader = asyncio.ensure_future(two_steps())
        with pytest.raises(asyncio.CancelledError):
            await handle.reader

    asyncio.run(main())
    assert len(handle.engine.calls) == 1  # the second step was never made


def test_a_cancel_arriving_with_a_runs_step_is_not_lost() -> None:
    client, handle = small_pool([("cancel_caller", 1)])
    got: list[StepResult] = []

    async def main() -> None:
        handle.reader = asyncio.ensure_future(read(client.run_steps(RUN_REQUEST, RUN), got))
        with pytest.raises(asyncio.CancelledError):
            await handle.reader

    asyncio.run(main())
    assert len(got) <= 2 and handle.streams[0].sent <= 2  # not read on to the run's end (5 steps)
    assert handle.streams[0].cancelled == 1

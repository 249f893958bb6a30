"""StepClients over Ray, for the loop when its pools are remote: a Serve DeploymentHandle (with
session affinity, timeouts, retries when a replica dies, and an optional fallback pool), or a
plain Ray actor running a :class:`~glimp_ray.step_server.StepServer` (batch jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
from ray.exceptions import RayActorError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from glimp_ray.engine.base import EngineError, StepClient, StepRejected
from glimp_ray.step_run import RunCursor, StepRun
from glimp_ray.types import StepRequest, StepResult

logger = logging.getLogger(__name__)
T = TypeVar("T")
# A gRPC pool call that failed other than UNAVAILABLE (which Serve raises as ActorUnavailableError)
# is handled like a replica gone: retried, then a 503.
_GONE = (
    RayActorError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
    BackPressureError,
    grpc.aio.AioRpcError,
)


class PoolUnavailableError(EngineError):
    """A pool could not answer: no live replica, or the call timed out."""


class ServeStepClient:
    """Calls one pool through its handle; ``session_id`` pins a request to one replica.

    Ray 2.60 does not carry the caller's session downstream, so every call sets it on the
    handle explicitly. A call to a replica that died is retried (the consistent-hash ring
    then maps the session to a live replica, which serves it from the transcript).
    """

    def __init__(self, handle: Any, name: str, timeout_s: float = 300.0, retries: int = 2, transport: str = "grpc"):
        if transport not in ("grpc", "actor"):
            raise ValueError(f"transport must be 'grpc' or 'actor', got {transport!r}")
        self.handle = handle
        # gRPC (Serve's throughput-optimized transport, ``deployments/serve_env.py``) or actor calls;
        # chosen per call, so it does not depend on the environment of the process that built the app.
        self.transport: dict[str, Any] = {"_by_reference": transport != "grpc"}
        self.name = name
        self.timeout_s = timeout_s
        self.retries = retries
        self._releasing: set[asyncio.Task[None]] = set()

    async def step(self, request: StepRequest) -> StepResult:
        for attempt in range(self.retries + 1):
            response = self.handle.options(session_id=request.session_id, **self.transport).step.remote(request)
            try:
                result = await _within(_awaited(response), self.timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                raise PoolUnavailableError(f"the {self.name} pool did not answer within {self.timeout_s:g} s") from None
            except asyncio.CancelledError:
                response.cancel()  # the client went away: stop the generation on the replica
                raise
            except TaskCancelledError:
                # Serve cancelled this call with the request that made it (the client went away).
                raise asyncio.CancelledError() from None
            except _GONE as exc:
                if attempt == self.retries:
                    raise PoolUnavailableError(f"the {self.name} pool is unavailable: {type(exc).__name__}") from exc
                logger.warning("%s pool call failed (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            return unwrap(result)
        raise AssertionError("unreachable")

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        """A run of easy steps (streaming glimpse) as one streaming call to the session's replica.

        Not retried: a failure ends the run with :class:`PoolUnavailableError`, and the loop makes
        the step a call of its own, which is."""
        handle = self.handle.options(session_id=request.session_id, stream=True, **self.transport)
        stream = handle.run_steps.remote(request, run)
        # The run's own cursor: after the step it ends with, the replica's run is over too (the loop
        # stops reading there), so nothing is left to cancel.
        cursor = RunCursor(request, run)
        cursor.first()
        finished = False
        try:
            while True:
                try:
                    item = await _within(stream.__anext__(), self.timeout_s)
                except StopAsyncIteration:
                    finished = True
                    return
                result = unwrap(item)
                cursor.advance(result)
                finished = cursor.ended
                yield result
        except asyncio.TimeoutError:
            raise PoolUnavailableError(f"the {self.name} pool did not answer within {self.timeout_s:g} s") from None
        except TaskCancelledError:
            raise asyncio.CancelledError() from None
        except _GONE as exc:
            raise PoolUnavailableError(f"the {self.name} pool is unavailable: {type(exc).__name__}") from exc
        finally:
            if not finished:
                stream.cancel()  # the loop stopped reading (or went away): stop the run on the replica

    async def release(self, session_id: str) -> None:
        """Forget the session on its replica. The call runs detached from the request that
        makes it: when that request is cancelled (a client disconnect), Serve cancels every call
        it made, and a release made while it unwinds would be cancelled with them."""
        task = asyncio.get_running_loop().create_task(self._release(session_id), context=contextvars.Context())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    async def _release(self, session_id: str) -> None:
        try:
            response = self.handle.options(session_id=session_id, **self.transport).release.remote(session_id)
            await asyncio.wait_for(_awaited(response), 10)
        except Exception as exc:  # the session then waits for LRU eviction on its replica
            logger.warning("releasing %s on the %s pool failed: %s", session_id, self.name, type(exc).__name__)


async def _awaited(response: Any) -> Any:
    return await response


if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[T], timeout_s: float) -> T:
        """``awaitable``'s answer, or :class:`TimeoutError` after ``timeout_s``. Awaited in the
        caller's task: ``asyncio.wait_for`` (before Python 3.12) loses a cancel that arrives as
        the answer does, and the request then goes on for a client that is gone."""
        async with asyncio.timeout(timeout_s):
            return await awaitable

else:  # pragma: no cover

    async def _within(awaitable: Awaitable[T], timeout_s: float) -> T:
        return await asyncio.wait_for(awaitable, timeout_s)  # can lose a cancel that comes with the answer


def unwrap(result: StepResult | StepRejected) -> StepResult:
    """A remote step's result; a rejection is raised here, as the engine would have."""
    if isinstance(result, StepRejected):
        raise result.error()
    return result


class ActorStepClient:
    """The StepClient over a Ray actor handle of a :class:`~glimp_ray.step_server.StepServer`."""

    def __init__(self, actor: Any):
        self.actor = actor

    async def step(self, request: StepRequest) -> StepResult:
        return unwrap(await self.actor.step.remote(request))

    async def release(self, session_id: str) -> None:
        await self.actor.release.remote(session_id)


class FallbackStepClient:
    """The large pool, or the small pool when the large one is unavailable.

    The fallback call uses the request's small-pool session, whose replica already holds
    the transcript; the result is marked ``fell_back``.
    """

    def __init__(self, primary: StepClient, fallback: StepClient):
        self.primary = primary
        self.fallback = fallback
        self._fell_back: dict[str, str] = {}  # primary session -> fallback session used

    async def step(self, request: StepRequest) -> StepResult:
        try:
            return await self.primary.step(request)
        except PoolUnavailableError as exc:
            logger.warning("falling back to the small pool: %s", exc)
            session = request.session_id.rsplit(":", 1)[0] + ":small"
            self._fell_back[request.session_id] = session
            result = await self.fallback.step(dataclasses.replace(request, session_id=session))
            result.fell_back = True
            return result

    async def release(self, session_id: str) -> None:
        await self.primary.release(session_id)
        fallback_session = self._fell_back.pop(session_id, None)
        if fallback_session is not None:
            await self.fallback.release(fallback_session)

"""Running a request's choices side by side: each choice is one collaboration (an async stream of
step records, then its result), seeded from the request's seed; a failure of one stops the rest.

Several choices run as detached tasks: pool calls over gRPC made side by side from one request's
context do not return (seen on Ray 2.60), so each runs in a context of its own, and its caller
cancels it when the request goes away, which Serve would have done.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

from deployments.errors import APIError, api_error
from deployments.protocol import INT64_MIN
from glimp_ray.records import CollabResult

T = TypeVar("T")

Run = AsyncGenerator[Any, None]  # one choice's events: StepRecords, then its CollabResult


def choice_seed(seed: int | None, k: int) -> int | None:
    """A prompt's ``k``-th choice's seed: ``seed + k``, wrapped to int64 (so a prompt sent in a
    batch gets what it gets alone)."""
    if seed is None or k == 0:
        return seed
    return (seed + k - INT64_MIN) % 2**64 + INT64_MIN


def detached(call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for one choice of several, in a context of its own."""
    return asyncio.get_running_loop().create_task(call, context=contextvars.Context())


async def side_by_side(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Awaits the calls concurrently; the first failure cancels the rest and is raised. One call
    is awaited in place."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [detached(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def guard(awaitable: Awaitable[T], param: str = "messages") -> T:
    """Awaits ``awaitable``; an error is raised as the HTTP error it means (``param``: the input
    field a too-long prompt is blamed on)."""
    try:
        return await awaitable
    except (StopAsyncIteration, APIError):
        raise
    except Exception as exc:
        raise api_error(exc, param) from None


async def final_result(run: Run, param: str) -> CollabResult:
    """Runs one choice to its end; its result."""
    result: CollabResult | None = None
    while True:
        try:
            event = await guard(run.__anext__(), param)
        except StopAsyncIteration:
            break
        if isinstance(event, CollabResult):
            result = event
    assert result is not None
    return result


class Interleaved:
    """The events of a request's choices as ``(index, event)``: each choice's in order, the choices
    interleaved as their steps complete, until every choice has given its result. ``firsts`` are
    the choices' first events, already read. One choice is read in place; several through tasks
    that pump their events into one queue."""

    def __init__(self, firsts: list[Any], runs: list[Run]):
        self.firsts, self.runs = list(firsts), runs
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._pumps: list[asyncio.Task[None]] = []

    async def __aiter__(self) -> AsyncIterator[tuple[int, Any]]:
        finished = 0
        while finished < len(self.runs):
            index, event = await self._next()
            finished += isinstance(event, CollabResult)
            yield index, event

    async def _next(self) -> tuple[int, Any]:
        if len(self.runs) == 1:
            return 0, self.firsts.pop() if self.firsts else await guard(self.runs[0].__anext__())
        if not self._pumps:
            self._pumps.extend(detached(self._pump(i, self.firsts[i], run)) for i, run in enumerate(self.runs))
        index, event = await self._queue.get()
        if isinstance(event, Exception):
            raise event
        return index, event

    async def _pump(self, index: int, event: Any, run: Run) -> None:
        try:
            while True:
                await self._queue.put((index, event))
                if isinstance(event, CollabResult):
                    return
                event = await guard(run.__anext__())
        except Exception as exc:
            await self._queue.put((index, exc))

    async def aclose(self) -> None:
        """Stops the pumps and closes every run (which releases its sessions)."""
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for run in self.runs:
            await run.aclose()

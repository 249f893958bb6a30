"""A StepClient wrapper that keeps every result: for benchmarks, tests and accounting."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from glimp_ray.engine.base import StepClient
from glimp_ray.step_run import StepRun, run_steps
from glimp_ray.types import StepRequest, StepResult


class RecordingClient:
    """Passes calls to ``client`` and keeps each result, glimpse calls and the steps of runs
    (streaming glimpse) included.

    With ``forward_release=False`` sessions are kept, so their caches can be inspected
    after a request.
    """

    def __init__(self, client: StepClient, forward_release: bool = True):
        self.client = client
        self.forward_release = forward_release
        self.results: list[StepResult] = []

    async def step(self, request: StepRequest) -> StepResult:
        result = await self.client.step(request)
        self.results.append(result)
        return result

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        """A run of easy steps on ``client``'s own run where it has one (the path the loop takes
        without this wrapper), else one :meth:`step` per step; each result is kept."""
        own = getattr(self.client, "run_steps", None)
        if own is None:
            async for result in run_steps(self, request, run):  # recorded by step
                yield result
            return
        async with contextlib.aclosing(own(request, run)) as steps:  # closing this run closes the client's
            async for result in steps:
                self.results.append(result)
                yield result

    async def release(self, session_id: str) -> None:
        if self.forward_release:
            await self.client.release(session_id)

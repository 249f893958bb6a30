"""A StepClient wrapper that keeps every result: for benchmarks, tests and accounting."""

from __future__ import annotations

from glimp_ray.engine.base import StepClient
from glimp_ray.types import StepRequest, StepResult


class RecordingClient:
    """Passes calls to ``client`` and keeps each result, glimpse calls included.

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

    async def release(self, session_id: str) -> None:
        if self.forward_release:
            await self.client.release(session_id)

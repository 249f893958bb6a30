"""The interface the collaboration loop uses to talk to a model pool.

An in-process engine implements it directly; on Ray Serve a thin wrapper around a
DeploymentHandle does. The loop never knows which.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from glimp_ray.types import StepRequest, StepResult


@runtime_checkable
class StepClient(Protocol):
    """One model pool: serves step requests and forgets sessions on request."""

    async def step(self, request: StepRequest) -> StepResult:
        """Serve one glimpse and/or generation call."""
        ...

    async def release(self, session_id: str) -> None:
        """Drop the session's cached tokens and KV; unknown ids are ignored."""
        ...


class EngineError(RuntimeError):
    """An engine could not serve a request."""


class PromptTooLongError(EngineError, ValueError):
    """The prompt plus transcript does not fit in the model's context."""

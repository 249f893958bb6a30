"""The interface the collaboration loop uses to talk to a model pool.

An in-process engine implements it directly; on Ray Serve a thin wrapper around a
DeploymentHandle does. The loop never knows which.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class NonFiniteSignalError(EngineError):
    """A glimpse signal (entropy or probability) came out NaN or infinite: the model's logits are
    broken, and routing on it would send the step one way silently."""


class InvalidRequestError(EngineError, ValueError):
    """The request cannot be served as sent (the client's error, e.g. an empty prompt)."""


class PromptTooLongError(InvalidRequestError):
    """The prompt plus transcript does not fit in the model's context."""


@dataclass(frozen=True)
class StepRejected:
    """An :class:`InvalidRequestError` sent back as a value by a remote pool, so the client's
    mistake is not logged as the server's failure; the caller raises :meth:`error`."""

    message: str
    too_long: bool = False

    @classmethod
    def of(cls, exc: InvalidRequestError) -> StepRejected:
        return cls(str(exc), isinstance(exc, PromptTooLongError))

    def error(self) -> InvalidRequestError:
        return PromptTooLongError(self.message) if self.too_long else InvalidRequestError(self.message)

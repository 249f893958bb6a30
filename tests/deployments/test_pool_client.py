"""Pool clients without Ray replicas: fake handles that time out, die or answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray")
from ray.exceptions import ActorDiedError  # noqa: E402

from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep  # noqa: E402
from glimp_ray.pool_clients import FallbackStepClient, PoolUnavailableError, ServeStepClient  # noqa: E402
from glimp_ray.types import GenerateSpec, StepRequest  # noqa: E402

REQUEST = StepRequest("r1:large", prompt="hi", generate=GenerateSpec(4))


class FakeHandle:
    """Mimics ``handle.options(session_id=..., _by_reference=False).step.remote(request)``."""

    def __init__(self, behaviour: list[str], engine: Any = None) -> None:
        self.behaviour = behaviour
        self.engine = engine or ScriptedEngine("x", [ScriptedStep("ok ")])
        self.sessions: list[str] = []
        self.cancelled = 0
        self.transports: list[bool] = []

    def options(self, session_id: str, _by_reference: bool = True) -> FakeHandle:
        self.sessions.append(session_id)
        self.transports.append(_by_reference)
        return self

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
                if action == "die":
                    raise ActorDiedError()
                if action == "hang":
                    await asyncio.sleep(60)
                return await handle.engine.step(request)

            def cancel(self) -> None:
                handle.cancelled += 1

        return Response()


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

"""The router's HTTP API in process, without Ray: a GlimpRouter over in-process step clients
(scripted engines in tests, HF engines in benchmarks), called through its FastAPI app over
httpx's ASGI transport (Serve's class-based view finds the router through the replica context,
stood in for here). Every request goes through the app's HTTP handling, validation, flow control,
the loop and the response as served; only the Ray calls to the pools are left out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar
from unittest import mock

import httpx

from glimp_ray.engine.base import StepClient

T = TypeVar("T")
MODEL = "glimp-test"
BASE = "http://router"


def router_over(small: StepClient, large: StepClient, /, **app: Any) -> Any:
    """A GlimpRouter (the class behind the Serve deployment) over in-process step clients;
    ``app`` replaces sections of its config."""
    from deployments.config import AppConfig
    from deployments.router import GlimpRouter

    config = {
        "small": {"model": "small"},
        "large": {"model": "large"},
        "routing": {"threshold": 1.0},
        "sampling": {"temperature": 0.0},
        "serving": {"model_name": MODEL, "tracing": {"exporter": "none"}},
        **app,
    }
    cls = GlimpRouter.func_or_class
    router = cls.__new__(cls)
    router.pools = {}
    router._serve(AppConfig.model_validate(config), small, large)
    return router


def serve(router: Any, scenario: Callable[[str, httpx.AsyncClient], Awaitable[T]]) -> T:
    """Runs ``await scenario(base_url, http_client)`` against ``router``'s app."""
    import ray.serve

    from deployments import auth, flow
    from deployments.router import app

    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=30) as client:
            return await scenario(BASE, client)

    context = SimpleNamespace(servable_object=router)
    try:
        with (
            mock.patch.object(ray.serve, "get_replica_context", lambda: context),
            mock.patch.object(flow, "_FLOW", None),
        ):
            return asyncio.run(main())
    finally:
        auth.configure(auth.ApiKeys())  # the router set its keys for the whole process

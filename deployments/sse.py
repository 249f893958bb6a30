"""Server-sent events: one JSON object per event, and a streaming response whose body is always
closed."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any], event: str | None = None) -> str:
    """One event; ``event`` names it (the Responses API names each event by its type)."""
    name = f"event: {event}\n" if event else ""
    return f"{name}data: {json.dumps(data, allow_nan=False)}\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A stream whose body is always closed, also when the client disconnects mid-stream:
    Starlette then abandons the body iterator, whose clean-up (releasing the request's pool
    sessions) would wait for the garbage collector."""

    def __init__(self, content: Any):
        super().__init__(content, media_type="text/event-stream")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

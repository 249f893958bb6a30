"""The GlimpRouter ingress: OpenAI-compatible HTTP API over the collaboration loop.

The loop runs here; every glimpse and step is a call to the small or the large pool
through a DeploymentHandle pinned to the request's session.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request types
# through Serve's class-based ingress.

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from deployments.config import AppConfig
from deployments.metrics import RouterMetrics
from deployments.pool_client import FallbackStepClient, PoolUnavailableError, ServeStepClient
from deployments.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    new_id,
    now,
    usage,
)
from glimp_ray.autoscaling import DemandMeter
from glimp_ray.collab import Collaborator, CollabResult, StepRecord
from glimp_ray.engine.base import PromptTooLongError
from glimp_ray.tracing import make_tracer_provider, request_span

app = FastAPI(title="glimp-ray", description="GlimpRouter: step-wise small/large collaboration")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    error = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {error['msg']}" if param else str(error["msg"])
    if error.get("type") == "json_invalid":
        message, param = "request body is not valid JSON", None
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


def _finish_reason(result: CollabResult) -> str:
    return "length" if result.answer_record.finish_reason == "length" else "stop"


def _trace(result: CollabResult) -> dict[str, Any]:
    return {
        "request_id": result.request_id,
        "stop_reason": result.stop_reason,
        "large_step_fraction": result.large_step_fraction,
        "threshold": result.params.threshold,
        "policy": result.params.policy,
        "mode": result.params.mode,
        "steps": [s.to_dict() for s in result.steps],
        "answer": result.answer_record.to_dict(),
    }


def _message(exc: BaseException) -> str:
    """The original error's message: an error raised in a replica arrives wrapped by Ray
    (its ``str`` is the replica's whole traceback)."""
    cause = getattr(exc, "cause", None)
    return str(cause) if isinstance(cause, BaseException) else str(exc)


def _trace_headers(raw: Request) -> dict[str, str]:
    """The caller's W3C trace context; inside Serve's own trace when Ray tracing is on."""
    headers = {k: v for k, v in raw.headers.items() if k in ("traceparent", "tracestate")}
    try:  # Ray 2.60 keeps the proxy/replica span context here when its tracing is enabled.
        from opentelemetry.propagate import inject
        from ray.serve._private.tracing_utils import get_trace_context

        serve_context = get_trace_context()
        if serve_context:
            carrier: dict[str, str] = {}
            inject(carrier, context=serve_context)  # type: ignore[arg-type]
            headers.update(carrier)
    except Exception:
        pass
    return headers


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


@serve.deployment
@serve.ingress(app)
class GlimpRouter:
    """HTTP ingress running the loop against the two pools."""

    def __init__(self, small: Any, large: Any, config: dict[str, Any]):
        self.config = AppConfig.model_validate(config)
        serving = self.config.serving
        small_client = ServeStepClient(small, "small", serving.step_timeout_s, serving.retries)
        large_client: Any = ServeStepClient(large, "large", serving.step_timeout_s, serving.retries)
        if serving.fallback_to_small:
            large_client = FallbackStepClient(large_client, small_client)
        self.pools = {"small": small, "large": large}
        self.collab = Collaborator(small_client, large_client, self.config.collab_params())
        self.model_name = serving.model_name
        provider = make_tracer_provider(serving.tracing.exporter, serving.tracing.path, "glimp-ray-router")
        self.tracer = provider.get_tracer("glimp_ray.router")
        self.metrics = RouterMetrics()
        self.demand = DemandMeter(serving.metrics_window_s, start=time.monotonic())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Change routing, sampling or limits at runtime (Serve's ``user_config``), e.g.
        ``{"routing": {"threshold": 0.5}}``; later requests use them, running ones keep theirs."""
        unknown = set(user_config) - {"routing", "sampling", "limits"}
        if unknown:
            raise ValueError(f"user_config may set routing, sampling and limits; not {', '.join(sorted(unknown))}")
        merged = self.config.model_dump()
        for section, values in user_config.items():
            merged[section] = {**merged[section], **(values or {})}
        self.config = AppConfig.model_validate(merged)
        self.collab.params = self.config.collab_params()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Request rate and routing ratio for the routing-ratio autoscaling policy."""
        load = self.demand.load(time.monotonic())
        return {
            "request_rate": load.request_rate,
            "tokens_per_request": load.tokens_per_request,
            "small_token_share": load.token_share.get("small", 0.0),
            "large_token_share": load.token_share.get("large", 0.0),
            "large_step_share": load.step_share.get("large", 0.0),
        }

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": now(), "owned_by": "glimp-ray"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, raw: Request) -> Any:
        messages = [m.model_dump() for m in body.messages]
        return await self._respond(body, {"messages": messages}, raw, chat=True)

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest, raw: Request) -> Any:
        return await self._respond(body, {"prompt": body.prompt}, raw, chat=False)

    async def _respond(
        self, body: ChatCompletionRequest | CompletionRequest, inputs: dict[str, Any], raw: Request, chat: bool
    ) -> Any:
        if body.model != self.model_name:
            raise APIError(
                404,
                f"model {body.model!r} does not exist; this server has {self.model_name!r}",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        if body.n != 1:
            raise APIError(400, "only n=1 is supported", "invalid_request_error", "n")
        overrides = body.overrides()
        try:
            self.collab.params.replace(**overrides)
        except ValueError as exc:
            raise APIError(400, str(exc), "invalid_request_error") from None
        request_id = new_id("chatcmpl" if chat else "cmpl")
        params = self.collab.params.replace(**overrides)
        stream = self.collab.stream(request_id=request_id, **inputs, **overrides)
        events = self._observed(stream, request_id, params, raw)
        param = "messages" if chat else "prompt"
        if body.stream:
            first = await self._guard(events.__anext__(), param)
            return StreamingResponse(
                self._stream(body, request_id, first, events, chat), media_type="text/event-stream"
            )
        result: CollabResult | None = None
        async for event in self._guarded(events, param):
            if isinstance(event, CollabResult):
                result = event
        assert result is not None
        return self._complete(body, request_id, result, chat)

    async def _observed(
        self, events: AsyncGenerator[Any, None], request_id: str, params: Any, raw: Request
    ) -> AsyncGenerator[Any, None]:
        """Spans and metrics for each event; the caller's traceparent joins its trace."""
        self.demand.arrived(time.monotonic())
        try:
            with request_span(self.tracer, request_id, params, _trace_headers(raw)) as span:
                async for event in events:
                    span.observe(event)
                    self.metrics.observe(event)
                    self._measure(event)
                    yield event
        except Exception as exc:
            self.metrics.failed(type(exc).__name__)
            raise
        finally:
            await events.aclose()

    def _measure(self, event: StepRecord | CollabResult) -> None:
        now = time.monotonic()
        record = event if isinstance(event, StepRecord) else event.answer_record
        self.demand.generated(now, "small" if record.fell_back else record.model, record.tokens)
        if isinstance(event, CollabResult):
            self.demand.finished(now, event.completion_tokens)

    async def _guard(self, awaitable: Any, param: str = "messages") -> Any:
        try:
            return await awaitable
        except (StopAsyncIteration, APIError):
            raise
        except PromptTooLongError as exc:
            raise APIError(400, _message(exc), "invalid_request_error", param, "context_length_exceeded") from None
        except PoolUnavailableError as exc:
            raise APIError(503, _message(exc), "service_unavailable", code="pool_unavailable") from None
        except ValueError as exc:
            raise APIError(400, _message(exc), "invalid_request_error") from None
        except Exception as exc:  # anything else is the server's fault, still in OpenAI's shape
            raise APIError(500, f"{type(exc).__name__}: {_message(exc)}", "internal_error") from None

    async def _guarded(self, events: AsyncIterator[Any], param: str) -> AsyncIterator[Any]:
        while True:
            try:
                event = await self._guard(events.__anext__(), param)
            except StopAsyncIteration:
                return
            yield event

    def _complete(self, body: Any, request_id: str, result: CollabResult, chat: bool) -> dict[str, Any]:
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": result.answer,
                    "reasoning_content": result.reasoning,
                },
                "finish_reason": _finish_reason(result),
            }
        else:
            choice = {
                "index": 0,
                "text": result.answer,
                "reasoning_content": result.reasoning,
                "finish_reason": _finish_reason(result),
            }
        response: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": now(),
            "model": self.model_name,
            "choices": [choice],
            "usage": usage(result.prompt_tokens, result.completion_tokens),
        }
        if body.glimp.return_trace:
            response["glimp"] = _trace(result)
        return response

    async def _stream(
        self, body: Any, request_id: str, first: Any, events: AsyncGenerator[Any, None], chat: bool
    ) -> AsyncIterator[str]:
        created = now()
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": (delta or {}).get("content", ""), "finish_reason": finish}
                if delta and "reasoning_content" in delta:
                    choice["reasoning_content"] = delta["reasoning_content"]
            data = {
                "id": request_id,
                "object": kind,
                "created": created,
                "model": self.model_name,
                "choices": [choice],
                **extra,
            }
            return _sse(data)

        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            event = first
            while True:
                if isinstance(event, StepRecord):
                    # With return_trace, each step's record travels with its text (live trace).
                    live: dict[str, Any] = {"glimp_step": event.to_dict()} if body.glimp.return_trace else {}
                    yield chunk({"reasoning_content": event.text}, **live)
                else:
                    result: CollabResult = event
                    yield chunk({"content": result.answer})
                    extra = {"glimp": _trace(result)} if body.glimp.return_trace else {}
                    yield chunk(None, _finish_reason(result), **extra)
                    if body.stream_options and body.stream_options.include_usage:
                        yield _sse(
                            {
                                "id": request_id,
                                "object": kind,
                                "created": created,
                                "model": self.model_name,
                                "choices": [],
                                "usage": usage(result.prompt_tokens, result.completion_tokens),
                            }
                        )
                    break
                event = await self._guard(events.__anext__())
        except APIError as exc:
            yield _sse(exc.body)
        except Exception as exc:  # the stream has started: report in-band, never hang
            yield _sse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"))
        finally:
            await events.aclose()  # releases the sessions (also on client disconnect)
        yield "data: [DONE]\n\n"

    async def pool_stats(self, pool: str) -> dict[str, Any]:
        """A replica's counters (``handle.pool_stats.remote("small")``), for tests."""
        return await self.pools[pool].options(session_id=uuid.uuid4().hex).stats.remote()

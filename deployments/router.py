"""The GlimpRouter ingress: OpenAI-compatible HTTP API over the collaboration loop.

The loop runs here; every glimpse and step is a call to the small or the large pool
through a DeploymentHandle pinned to the request's session.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request types
# through Serve's class-based ingress.

import asyncio
import contextvars
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any, Literal

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve

from deployments import auth
from deployments.config import AppConfig
from deployments.errors import APIError, api_error, install_error_handlers
from deployments.limits import check_model, check_prompt_chars, check_request, read_request
from deployments.metrics import RouterMetrics
from deployments.protocol import (
    INT64_MIN,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    UsageInfo,
    chat_messages,
    error_body,
    new_id,
    now,
)
from deployments.tokenizer import ServedTokenizer
from glimp_ray.collab import Collaborator, CollabResult, StepRecord
from glimp_ray.config import RoutingConfig
from glimp_ray.meters import DemandMeter
from glimp_ray.pool_clients import FallbackStepClient, ServeStepClient
from glimp_ray.tau_control import TauController
from glimp_ray.tracing import make_tracer_provider, request_span

app = FastAPI(
    title="glimp-ray",
    description="GlimpRouter: step-wise small/large collaboration",
    dependencies=[Depends(auth.require_api_key)],
)

install_error_handlers(app)


def _finish_reason(result: CollabResult) -> Literal["stop", "length"]:
    return "length" if result.answer_record.finish_reason == "length" else "stop"


def _trace(result: CollabResult) -> dict[str, Any]:
    return {
        "request_id": result.request_id,
        "stop_reason": result.stop_reason,
        "large_step_fraction": result.large_step_fraction,
        "preset": result.params.preset,
        "threshold": result.params.threshold,
        "policy": result.params.policy,
        "mode": result.params.mode,
        "entropy": result.params.entropy,
        "top_k": result.params.top_k,
        "steps": [s.to_dict() for s in result.steps],
        "answer": result.answer_record.to_dict(),
    }


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


def _usage(results: list[CollabResult], n: int) -> UsageInfo:
    """Each prompt's tokens once (not once per choice), every choice's completion tokens."""
    prompt_tokens = sum(r.prompt_tokens for r in results[::n])
    return UsageInfo.of(prompt_tokens, sum(r.completion_tokens for r in results))


def _detached(call: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task for one choice of a request with several. It runs in a context of its own: pool calls
    over gRPC made side by side from the request's context do not return (seen on Ray 2.60). The
    caller cancels it when the request goes away, which Serve would have done."""
    return asyncio.get_running_loop().create_task(call, context=contextvars.Context())


async def _side_by_side(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Awaits the calls concurrently; the first failure cancels the rest and is raised. One call
    is awaited in place."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [_detached(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, allow_nan=False)}\n\n"


class _ClosingStreamingResponse(StreamingResponse):
    """A stream whose body is always closed, also when the client disconnects mid-stream:
    Starlette then abandons the body iterator, whose clean-up (releasing the request's pool
    sessions) would wait for the garbage collector."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


@serve.deployment
@serve.ingress(app)
class GlimpRouter:
    """HTTP ingress running the loop against the two pools."""

    def __init__(self, small: Any, large: Any, config: dict[str, Any]):
        self.config = AppConfig.model_validate(config)
        serving = self.config.serving
        auth.configure(auth.ApiKeys.of((k.name, k.key_sha256, k.key_env) for k in serving.api_keys))
        transport = serving.pool_transport
        small_client = ServeStepClient(small, "small", serving.step_timeout_s, serving.retries, transport)
        large_client: Any = ServeStepClient(large, "large", serving.step_timeout_s, serving.retries, transport)
        if serving.fallback_to_small:
            large_client = FallbackStepClient(large_client, small_client)
        self.pools = {"small": small, "large": large}
        self.collab = Collaborator(small_client, large_client, self.config.collab_params())
        self.model_name = serving.model_name
        self.tokenizer = ServedTokenizer(self.config.large.served())
        provider = make_tracer_provider(serving.tracing.exporter, serving.tracing.path, "glimp-ray-router")
        self.tracer = provider.get_tracer("glimp_ray.router")
        self.metrics = RouterMetrics()
        self.demand = DemandMeter(serving.metrics_window_s, start=time.monotonic())
        self._control_tau()

    def _control_tau(self) -> None:
        """The online τ (routing.target_large_fraction / overload), started from the configured τ."""
        routing = self.config.routing
        self.tau = TauController(routing.threshold, routing.tau_control())
        self.collab.tau = (lambda: self.tau.tau) if self.tau.control.active else None
        self.metrics.threshold.set(self.tau.tau)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Change routing, sampling or limits at runtime (Serve's ``user_config``), e.g.
        ``{"routing": {"threshold": 0.5}}``; later requests use them, running ones keep theirs."""
        unknown = set(user_config) - {"routing", "sampling", "limits"}
        if unknown:
            raise ValueError(f"user_config may set routing, sampling and limits; not {', '.join(sorted(unknown))}")
        merged = self.config.model_dump()
        # Only what was set, so a switch to the reference preset brings its own entropy.
        merged["routing"] = self.config.routing.model_dump(exclude_unset=True)
        for section, values in user_config.items():
            merged[section] = {**merged[section], **(values or {})}
        routing = self.config.routing
        self.config = AppConfig.model_validate(merged)
        self.collab.params = self.config.collab_params()
        if self.config.routing != routing:
            self._control_tau()

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
        return ModelList(data=[ModelCard(id=self.model_name)]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> dict[str, Any]:
        if model_id != self.model_name:
            raise APIError(
                404, f"model {model_id!r} does not exist", "invalid_request_error", "model", "model_not_found"
            )
        return ModelCard(id=self.model_name).model_dump()

    @app.post("/tokenize")
    async def tokenize(self, raw: Request) -> dict[str, Any]:
        """vLLM's ``/tokenize`` in the served (large) model's vocabulary."""
        limits = self.config.serving.request_limits
        body = await read_request(raw, TokenizeRequest, limits)
        check_model(body.model, self.model_name)
        check_prompt_chars(body.text_chars(), limits, "prompt" if body.prompt is not None else "messages")
        try:
            if body.prompt is not None:
                special = True if body.add_special_tokens is None else body.add_special_tokens
                tokens = await self.tokenizer.tokenize(body.prompt, special)
            else:
                tokens = await self.tokenizer.tokenize_chat(
                    chat_messages(body.messages or []), body.add_generation_prompt, body.continue_final_message
                )
        except ValueError as exc:
            raise APIError(400, str(exc), "invalid_request_error") from None
        return {
            "count": len(tokens),
            "max_model_len": await self.tokenizer.max_model_len(),
            "tokens": tokens,
            "token_strs": await self.tokenizer.token_strs(tokens) if body.return_token_strs else None,
        }

    @app.post("/detokenize")
    async def detokenize(self, raw: Request) -> dict[str, Any]:
        body = await read_request(raw, DetokenizeRequest, self.config.serving.request_limits)
        check_model(body.model, self.model_name)
        try:
            return {"prompt": await self.tokenizer.detokenize(body.tokens)}
        except ValueError as exc:
            raise APIError(400, str(exc), "invalid_request_error", "tokens") from None

    @app.get("/tokenizer_info")
    async def tokenizer_info(self) -> dict[str, Any]:
        return await self.tokenizer.info()

    @app.post("/v1/chat/completions")
    async def chat_completions(self, raw: Request) -> Any:
        body = await read_request(raw, ChatCompletionRequest, self.config.serving.request_limits)
        check_request(body, self.model_name, self.config.serving.request_limits)
        return await self._respond(body, [{"messages": body.chat_messages()}], raw, chat=True)

    @app.post("/v1/completions")
    async def completions(self, raw: Request) -> Any:
        body = await read_request(raw, CompletionRequest, self.config.serving.request_limits)
        check_request(body, self.model_name, self.config.serving.request_limits)
        prompts = [await self._prompt_text(p) for p in body.prompts()]
        return await self._respond(body, [{"prompt": p} for p in prompts], raw, chat=False)

    async def _prompt_text(self, prompt: str | list[int]) -> str:
        """A prompt as text: token ids are decoded with the served model's tokenizer."""
        if isinstance(prompt, str):
            return prompt
        try:
            text = await self.tokenizer.detokenize(prompt)
        except ValueError as exc:
            raise APIError(400, str(exc), "invalid_request_error", "prompt") from None
        check_prompt_chars(len(text), self.config.serving.request_limits, "prompt")
        return text

    async def _respond(
        self, body: ChatCompletionRequest | CompletionRequest, inputs: list[dict[str, Any]], raw: Request, chat: bool
    ) -> Any:
        """Runs ``n`` collaborations per prompt side by side; choice ``i * n + k`` is prompt ``i``'s
        ``k``-th, seeded with ``seed + k`` (so a prompt in a batch gets what it gets alone)."""
        count = len(inputs) * body.n
        most = self.config.serving.request_limits.max_choices
        if count > most:
            param = "n" if len(inputs) == 1 else "prompt"
            message = f"{count} choices asked for (prompts x n); this server allows at most {most}"
            raise APIError(400, message, "invalid_request_error", param)
        overrides = body.overrides()
        try:
            params = self.collab.params.replace(**overrides)
        except ValueError as exc:
            raise APIError(400, str(exc), "invalid_request_error") from None
        refused = RoutingConfig.entropy_refused(params.entropy, self.config.small.engine, params.top_k)
        if refused:
            field = "glimp.top_k" if refused.startswith("top_k") else "glimp.entropy"
            raise APIError(400, refused, "invalid_request_error", field)
        request_id = new_id("chatcmpl" if chat else "cmpl")
        headers = _trace_headers(raw)
        key = auth.key_name(raw)
        runs = []
        for index in range(count):
            choice = dict(overrides)
            if index % body.n and overrides["seed"] is not None:  # a prompt's k-th choice: seed + k
                choice["seed"] = (overrides["seed"] + index % body.n - INT64_MIN) % 2**64 + INT64_MIN
            run_id = request_id if count == 1 else f"{request_id}-{index}"
            stream = self.collab.stream(request_id=run_id, **inputs[index // body.n], **choice)
            runs.append(self._observed(stream, run_id, params, headers, key))
        param = "messages" if chat else "prompt"
        handed_over = False
        try:
            if body.stream:
                firsts = await _side_by_side([self._guard(run.__anext__(), param) for run in runs])
                handed_over = True
                return _ClosingStreamingResponse(
                    self._stream(body, request_id, firsts, runs, chat), media_type="text/event-stream"
                )
            results = await _side_by_side([self._result(run, param) for run in runs])
            return self._complete(body, request_id, results, chat)
        finally:
            if not handed_over:
                for run in runs:
                    await run.aclose()

    async def _result(self, events: AsyncGenerator[Any, None], param: str) -> CollabResult:
        result: CollabResult | None = None
        async for event in self._guarded(events, param):
            if isinstance(event, CollabResult):
                result = event
        assert result is not None
        return result

    async def _observed(
        self,
        events: AsyncGenerator[Any, None],
        request_id: str,
        params: Any,
        headers: dict[str, str],
        key: str | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Spans and metrics for each event; the caller's traceparent (``headers``) joins its trace,
        and the name of the API key it came with (``key``) goes on its span and request metric."""
        self.demand.arrived(time.monotonic())
        try:
            with request_span(self.tracer, request_id, params, headers, api_key=key) as span:
                async for event in events:
                    span.observe(event)
                    self._measure(event, key)
                    yield event
        except Exception as exc:
            self.metrics.failed(type(exc).__name__, key)
            raise
        finally:
            await events.aclose()

    def _measure(self, event: StepRecord | CollabResult, key: str | None = None) -> None:
        now = time.monotonic()
        if isinstance(event, StepRecord):
            self.demand.observe(now, event)
            if event.entropy is not None:
                self.tau.observe_entropy(event.entropy)
            if event.model == "large" and not event.fell_back and event.tokens:
                # The large call's wall clock per token (queues and a slowed batch): the overload signal.
                self.tau.observe_large_call((event.latency_s - event.glimpse_s) / event.tokens)
            self.metrics.threshold.set(self.tau.tau)
        else:
            self.demand.observe(now, event.answer_record, finished_tokens=event.completion_tokens)
        self.metrics.observe(event, self.demand.load(now), key)

    async def _guard(self, awaitable: Any, param: str = "messages") -> Any:
        try:
            return await awaitable
        except (StopAsyncIteration, APIError):
            raise
        except Exception as exc:
            raise api_error(exc, param) from None

    async def _guarded(self, events: AsyncIterator[Any], param: str) -> AsyncIterator[Any]:
        while True:
            try:
                event = await self._guard(events.__anext__(), param)
            except StopAsyncIteration:
                return
            yield event

    def _complete(self, body: Any, request_id: str, results: list[CollabResult], chat: bool) -> dict[str, Any]:
        usage = _usage(results, body.n)
        # One choice: its trace is the response's ``glimp``; several: each choice carries its own.
        traces = [_trace(r) if body.glimp.return_trace else None for r in results]
        per_choice = len(results) > 1
        response: ChatCompletionResponse | CompletionResponse
        if chat:
            choices = [
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=r.answer, reasoning_content=r.reasoning),
                    finish_reason=_finish_reason(r),
                    glimp=traces[i] if per_choice else None,
                )
                for i, r in enumerate(results)
            ]
            response = ChatCompletionResponse(
                id=request_id,
                model=self.model_name,
                choices=choices,
                usage=usage,
                glimp=None if per_choice else traces[0],
            )
        else:
            texts = [
                CompletionChoice(
                    index=i,
                    text=r.answer,
                    reasoning_content=r.reasoning,
                    finish_reason=_finish_reason(r),
                    glimp=traces[i] if per_choice else None,
                )
                for i, r in enumerate(results)
            ]
            response = CompletionResponse(
                id=request_id,
                model=self.model_name,
                choices=texts,
                usage=usage,
                glimp=None if per_choice else traces[0],
            )
        return response.model_dump()

    async def _stream(
        self, body: Any, request_id: str, firsts: list[Any], runs: list[AsyncGenerator[Any, None]], chat: bool
    ) -> AsyncIterator[str]:
        """The choices' events as SSE chunks, each choice's in order, the choices interleaved as
        their steps complete; then the usage (with ``stream_options.include_usage``) and ``[DONE]``."""
        created = now()

        def chunk(
            index: int,
            delta: DeltaMessage | None,
            finish: Any = None,
            usage: UsageInfo | None = None,
            **extensions: Any,
        ) -> str:
            """One SSE event: a chat chunk, or a completion chunk (its text is the delta's content)."""
            envelope: dict[str, Any] = {"id": request_id, "created": created, "model": self.model_name}
            data: ChatCompletionChunk | CompletionResponse
            if chat:
                choices = [ChatChunkChoice(index=index, delta=delta, finish_reason=finish)] if delta is not None else []
                data = ChatCompletionChunk(**envelope, choices=choices, usage=usage, **extensions)
            else:
                texts = []
                if delta is not None:
                    part = CompletionChoice(
                        index=index,
                        text=delta.content or "",
                        reasoning_content=delta.reasoning_content,
                        finish_reason=finish,
                    )
                    texts.append(part)
                data = CompletionResponse(**envelope, choices=texts, usage=usage, **extensions)
            return _sse(data.model_dump())

        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(index: int, event: Any, run: AsyncGenerator[Any, None]) -> None:
            try:
                while True:
                    await queue.put((index, event))
                    if isinstance(event, CollabResult):
                        return
                    event = await self._guard(run.__anext__())
            except Exception as exc:
                await queue.put((index, exc))

        pumps: list[asyncio.Task[None]] = []

        async def next_event() -> tuple[int, Any]:
            """The next event of any choice: one choice's in place, several through their pumps."""
            if len(runs) == 1:
                return 0, firsts.pop() if firsts else await self._guard(runs[0].__anext__())
            if not pumps:
                pumps.extend(_detached(pump(i, firsts[i], run)) for i, run in enumerate(runs))
            index, event = await queue.get()
            if isinstance(event, Exception):
                raise event
            return index, event

        try:
            if chat:
                for index in range(len(runs)):
                    yield chunk(index, DeltaMessage(role="assistant", content=""))
            results: dict[int, CollabResult] = {}
            while len(results) < len(runs):
                index, event = await next_event()
                if isinstance(event, StepRecord):
                    # With return_trace, each step's record travels with its text (live trace).
                    live = event.to_dict() if body.glimp.return_trace else None
                    yield chunk(index, DeltaMessage(reasoning_content=event.text), glimp_step=live)
                else:
                    results[index] = event
                    yield chunk(index, DeltaMessage(content=event.answer))
                    trace = _trace(event) if body.glimp.return_trace else None
                    yield chunk(index, DeltaMessage(), _finish_reason(event), glimp=trace)
            if body.stream_options and body.stream_options.include_usage:
                yield chunk(0, None, usage=_usage([results[i] for i in range(len(runs))], body.n))
        except APIError as exc:
            yield _sse(exc.body)
        except Exception as exc:  # the stream has started: report in-band, never hang
            yield _sse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"))
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for run in runs:
                await run.aclose()  # releases the sessions (also on client disconnect)
        yield "data: [DONE]\n\n"

    async def pool_stats(self, pool: str) -> dict[str, Any]:
        """A replica's counters (``handle.pool_stats.remote("small")``), for tests."""
        return await self.pools[pool].options(session_id=uuid.uuid4().hex).stats.remote()

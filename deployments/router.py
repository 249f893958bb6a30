"""The GlimpRouter ingress: the OpenAI-compatible HTTP API over the collaboration loop.

The loop runs here; every glimpse and step is a call to the small or the large pool through a
DeploymentHandle pinned to the request's session. A request's choices run side by side
(``choices.py``); chat and text completions are written by ``completions.py``, the Responses
API by ``responses_api.py``.
"""

# No `from __future__ import annotations` here: FastAPI must see the real request types
# through Serve's class-based ingress.

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from ray import serve

from deployments import auth
from deployments.choices import Interleaved, Run, choice_seed, final_result, guard, side_by_side
from deployments.completions import CompletionsWriter
from deployments.config import AppConfig
from deployments.errors import APIError, install_error_handlers
from deployments.limits import check_model, check_prompt_chars, check_request, read_request
from deployments.metrics import RouterMetrics
from deployments.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    chat_messages,
    new_id,
)
from deployments.protocol.responses_api import ResponsesRequest
from deployments.responses_api import ResponsesWriter, check_responses_request
from deployments.sse import ClosingStreamingResponse
from deployments.tokenizer import ServedTokenizer
from deployments.tools import ToolUse
from glimp_ray.collab import Collaborator, CollabResult, StepRecord
from glimp_ray.config import RoutingConfig
from glimp_ray.meters import DemandMeter
from glimp_ray.params import CollabParams
from glimp_ray.pool_clients import FallbackStepClient, ServeStepClient
from glimp_ray.tau_control import TauController
from glimp_ray.tracing import make_tracer_provider, request_span

app = FastAPI(
    title="glimp-ray",
    description="GlimpRouter: step-wise small/large collaboration",
    dependencies=[Depends(auth.require_api_key)],
)

install_error_handlers(app)


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


def _loop_params(config: AppConfig, base: CollabParams, body: Any, prompts: int) -> tuple[CollabParams, dict[str, Any]]:
    """The loop's parameters for a request (``body.overrides()`` over the app's), and the overrides;
    a 400 for more choices than allowed and for a glimpse the small pool cannot give."""
    count = prompts * body.n
    most = config.serving.request_limits.max_choices
    if count > most:
        param = "n" if prompts == 1 else "prompt"
        message = f"{count} choices asked for (prompts x n); this server allows at most {most}"
        raise APIError(400, message, "invalid_request_error", param)
    overrides = body.overrides()
    try:
        params = base.replace(**overrides)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_request_error") from None
    refused = RoutingConfig.entropy_refused(params.entropy, config.small.engine, params.top_k)
    if refused:
        field = "glimp.top_k" if refused.startswith("top_k") else "glimp.entropy"
        raise APIError(400, refused, "invalid_request_error", field)
    return params, overrides


def _tool_use(config: AppConfig, params: CollabParams, tools: Any, choice: Any) -> ToolUse:
    """What the request's tools let the answer do; the answer's model decides what can be honoured."""
    pool = params.resolved_answer_model
    engine = config.small.engine if pool == "small" else config.large.engine
    return ToolUse.of(tools, choice, engine, pool, "tool_choice")


@serve.deployment
@serve.ingress(app)
class GlimpRouter:
    """HTTP ingress running the loop against the two pools."""

    def __init__(self, small: Any, large: Any, config: dict[str, Any]):
        app_config = AppConfig.model_validate(config)
        serving = app_config.serving
        transport = serving.pool_transport
        small_client = ServeStepClient(small, "small", serving.step_timeout_s, serving.retries, transport)
        large_client: Any = ServeStepClient(large, "large", serving.step_timeout_s, serving.retries, transport)
        if serving.fallback_to_small:
            large_client = FallbackStepClient(large_client, small_client)
        self.pools = {"small": small, "large": large}
        self._serve(app_config, small_client, large_client)

    def _serve(self, config: AppConfig, small_client: Any, large_client: Any) -> None:
        """Everything but the pool handles: the loop over two step clients, auth, tracing, metrics
        and the online τ (tests run the router over in-process clients with it)."""
        self.config = config
        serving = config.serving
        auth.configure(auth.ApiKeys.of((k.name, k.key_sha256, k.key_env) for k in serving.api_keys))
        self.collab = Collaborator(small_client, large_client, config.collab_params())
        self.model_name = serving.model_name
        self.tokenizer = ServedTokenizer(config.large.served())
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
        if self.config.routing.model_dump(exclude={"shadow"}) != routing.model_dump(exclude={"shadow"}):
            self._control_tau()  # new shadow policies alone keep the online τ where it is

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

    @app.post("/v1/responses")
    async def responses(self, raw: Request) -> Any:
        """OpenAI's Responses API, stateless: the input and instructions in, a reasoning item and
        the answer's message (or its function calls) out."""
        limits = self.config.serving.request_limits
        body = await read_request(raw, ResponsesRequest, limits)
        check_responses_request(body, self.model_name, limits)
        params, overrides = _loop_params(self.config, self.collab.params, body, 1)
        tools = _tool_use(self.config, params, body.chat_tools(), body.chat_tool_choice())
        request_id = new_id("resp", "_")
        runs = self._runs(request_id, [tools.inputs(body.chat_messages())], 1, overrides, params, raw)
        writer = ResponsesWriter(body, request_id, self.model_name, params, tools)
        return await self._answer(body.stream, runs, "input", writer.complete, writer.stream)

    async def _respond(
        self, body: ChatCompletionRequest | CompletionRequest, inputs: list[dict[str, Any]], raw: Request, chat: bool
    ) -> Any:
        """Runs ``n`` collaborations per prompt side by side; choice ``i * n + k`` is prompt ``i``'s
        ``k``-th, seeded with ``seed + k`` (so a prompt in a batch gets what it gets alone)."""
        params, overrides = _loop_params(self.config, self.collab.params, body, len(inputs))
        tools = ToolUse()
        if isinstance(body, ChatCompletionRequest):
            tools = _tool_use(self.config, params, body.tools, body.tool_choice)
            inputs = [tools.inputs(one["messages"]) for one in inputs]
        request_id = new_id("chatcmpl" if chat else "cmpl")
        runs = self._runs(request_id, inputs, body.n, overrides, params, raw)
        writer = CompletionsWriter(body, request_id, self.model_name, chat, tools)
        return await self._answer(body.stream, runs, "messages" if chat else "prompt", writer.complete, writer.stream)

    def _runs(
        self,
        request_id: str,
        inputs: list[dict[str, Any]],
        n: int,
        overrides: dict[str, Any],
        params: CollabParams,
        raw: Request,
    ) -> list[Run]:
        """One observed collaboration per choice, not started yet: ``n`` per input."""
        headers = _trace_headers(raw)
        key = auth.key_name(raw)
        count = len(inputs) * n
        runs = []
        for index in range(count):
            choice = {**overrides, "seed": choice_seed(overrides["seed"], index % n)}
            run_id = request_id if count == 1 else f"{request_id}-{index}"
            stream = self.collab.stream(request_id=run_id, **inputs[index // n], **choice)
            runs.append(self._observed(stream, run_id, params, headers, key))
        return runs

    async def _answer(
        self,
        stream: bool,
        runs: list[Run],
        param: str,
        complete: Callable[[list[CollabResult]], dict[str, Any]],
        write: Callable[[Interleaved], AsyncIterator[str]],
    ) -> Any:
        """The response: ``complete``'s of the choices' results, or ``write``'s stream of their
        events (a failure before the first event of every choice is still an HTTP error)."""
        handed_over = False
        try:
            if stream:
                firsts = await side_by_side([guard(run.__anext__(), param) for run in runs])
                handed_over = True
                return ClosingStreamingResponse(write(Interleaved(firsts, runs)))
            return complete(await side_by_side([final_result(run, param) for run in runs]))
        finally:
            if not handed_over:
                for run in runs:
                    await run.aclose()

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
        # The shadow metric counts the app's shadow policies; a request's own (glimp.shadow) shows
        # in its trace and spans only, so a client's experiment does not skew the operator's counts.
        shadow = params.shadow == self.collab.params.shadow
        try:
            with request_span(self.tracer, request_id, params, headers, api_key=key) as span:
                async for event in events:
                    span.observe(event)
                    self._measure(event, key, shadow)
                    yield event
        except Exception as exc:
            self.metrics.failed(type(exc).__name__, key)
            raise
        finally:
            await events.aclose()

    def _measure(self, event: StepRecord | CollabResult, key: str | None = None, shadow: bool = True) -> None:
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
        self.metrics.observe(event, self.demand.load(now), key, shadow)

    async def pool_stats(self, pool: str) -> dict[str, Any]:
        """A replica's counters (``handle.pool_stats.remote("small")``), for tests."""
        return await self.pools[pool].options(session_id=uuid.uuid4().hex).stats.remote()

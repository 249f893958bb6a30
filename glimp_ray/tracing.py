"""OpenTelemetry spans from the loop's records: a span per request, a child per step and
one for the answer. Exporters: none, console, OTLP, or a JSON-lines file (one span per
line) that ``glimp-ray calibrate`` and ``glimp-ray plan`` read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status, StatusCode

from glimp_ray.collab import CollabParams, CollabResult, StepRecord
from glimp_ray.policies import POST_STEP_POLICIES

SPAN_REQUEST = "glimp.request"
SPAN_STEP = "glimp.step"
SPAN_ANSWER = "glimp.answer"
SHADOW_ATTRIBUTE = "glimp.shadow."  # + a shadow policy's name: its decision on the step
Exporter = Literal["none", "console", "otlp", "jsonl"]


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON object per line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_to_dict(span)) + "\n" for span in spans]
        with self._lock, self.path.open("a") as out:
            out.writelines(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class CollectingSpanExporter(SpanExporter):
    """Keeps finished spans in memory by trace, as :func:`span_to_dict` dicts, until
    :meth:`pop` takes a trace's spans (e.g. to write them with the request's result)."""

    def __init__(self) -> None:
        self._traces: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                as_dict = span_to_dict(span)
                self._traces.setdefault(as_dict["trace_id"], []).append(as_dict)
        return SpanExportResult.SUCCESS

    def pop(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return self._traces.pop(trace_id, [])

    def shutdown(self) -> None:
        pass


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "attributes": dict(span.attributes or {}),
    }


def make_tracer_provider(
    exporter: Exporter = "none", path: str | Path | None = None, service_name: str = "glimp-ray"
) -> TracerProvider:
    """A provider wired to the chosen exporter (``path`` is the JSON-lines file)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "jsonl":
        if path is None:
            raise ValueError("the jsonl exporter needs a path")
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ValueError("the otlp exporter needs opentelemetry-exporter-otlp installed") from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter != "none":
        raise ValueError(f"unknown exporter {exporter!r}; expected none, console, otlp or jsonl")
    return provider


def step_attributes(record: StepRecord, threshold: float | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "glimp.step.index": record.index,
        "glimp.route": record.model,
        "glimp.finish_reason": record.finish_reason,
        "glimp.tokens.generated": record.tokens,
        "glimp.tokens.reused": record.reused_tokens,
        "glimp.tokens.prefilled": record.prefill_tokens,
        "glimp.glimpse.prefill_tokens": record.glimpse_prefill_tokens,
        "glimp.latency_s": record.latency_s,
        "glimp.glimpse_s": record.glimpse_s,
        "glimp.glimpse.model_s": record.glimpse_model_s,
        "glimp.model_s": record.model_s,
        "glimp.queue_s": record.queue_s,
        "glimp.replica": record.replica,
        "glimp.fell_back": record.fell_back,
    }
    if record.glimpse_replica:
        attributes["glimp.glimpse_replica"] = record.glimpse_replica
    if record.entropy is not None:
        attributes["glimp.entropy"] = record.entropy
    if record.top1_prob is not None:
        attributes["glimp.top1_prob"] = record.top1_prob
    if record.top2_prob is not None:
        attributes["glimp.top2_prob"] = record.top2_prob
    if record.policy:
        attributes["glimp.policy"] = record.policy
    for name in ("step_entropy", "step_perplexity", "step_min_prob", "post_signal"):
        value = getattr(record, name)
        if value is not None:
            attributes[f"glimp.{name}"] = value
    if record.policy in POST_STEP_POLICIES:
        attributes["glimp.rewritten"] = record.rewritten
        attributes["glimp.draft.tokens"] = record.draft_tokens
        attributes["glimp.draft_s"] = record.draft_s
        attributes["glimp.check_s"] = record.check_s
        attributes["glimp.check.prefill_tokens"] = record.check_prefill_tokens
    if threshold is not None:
        attributes["glimp.threshold"] = threshold
    for name, decision in record.shadow.items():  # span attributes are flat: one per shadow policy
        attributes[f"{SHADOW_ATTRIBUTE}{name}"] = decision
    return attributes


class RequestTrace:
    """Turns one request's event stream into spans as the events arrive."""

    def __init__(self, tracer: trace.Tracer, root: trace.Span, params: CollabParams):
        self.tracer = tracer
        self.root = root
        self.params = params
        self.context = trace.set_span_in_context(root)

    @property
    def trace_id(self) -> str:
        """The trace's id as :func:`span_to_dict` writes it."""
        return f"{self.root.get_span_context().trace_id:032x}"

    def observe(self, event: StepRecord | CollabResult) -> None:
        threshold = self.params.threshold if self.params.policy == "entropy" else None
        if isinstance(event, StepRecord):
            # The τ the step was routed on (the router's online τ moves between steps).
            used = event.threshold if event.threshold is not None else threshold
            self._child(SPAN_STEP, event, step_attributes(event, used))
            return
        answer = step_attributes(event.answer_record, None)
        self._child(SPAN_ANSWER, event.answer_record, answer)
        self.root.set_attributes(
            {
                "glimp.steps": len(event.steps),
                "glimp.large_step_fraction": event.large_step_fraction,
                "glimp.tokens.thinking": event.thinking_tokens,
                "glimp.tokens.completion": event.completion_tokens,
                "glimp.tokens.prompt": event.prompt_tokens,
                "glimp.latency_s": event.latency_s,
                "glimp.stop_reason": event.stop_reason,
            }
        )
        for name, tally in event.shadow_tallies.items():
            self.root.set_attributes(
                {
                    f"{SHADOW_ATTRIBUTE}{name}.agreement": tally.agreement,
                    f"{SHADOW_ATTRIBUTE}{name}.large_fraction": tally.large_fraction,
                }
            )

    def _child(self, name: str, record: StepRecord, attributes: dict[str, Any]) -> None:
        # The record knows how long the step took; its span covers exactly that interval.
        end = time.time_ns()
        start = end - int(record.latency_s * 1e9)
        span = self.tracer.start_span(name, context=self.context, start_time=start, attributes=attributes)
        span.end(end_time=end)


@contextmanager
def request_span(
    tracer: trace.Tracer,
    request_id: str,
    params: CollabParams,
    headers: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> Iterator[RequestTrace]:
    """The request's root span; an incoming ``traceparent`` header makes it a child of the
    caller's trace. ``api_key``: the name (never the key) of the API key the request came with."""
    parent: Context | None = extract(dict(headers)) if headers else None
    attributes: dict[str, Any] = {
        "glimp.request_id": request_id,
        "glimp.policy": params.policy,
        "glimp.mode": params.mode,
        "glimp.threshold": params.threshold,
    }
    for name, threshold in params.shadow:
        attributes[f"{SHADOW_ATTRIBUTE}{name}.threshold"] = threshold
    if api_key is not None:
        attributes["glimp.api_key"] = api_key
    # Not made "current": a streamed response ends the span in another task, where
    # detaching a context attached here would fail. Children name their parent explicitly.
    root = tracer.start_span(SPAN_REQUEST, context=parent, attributes=attributes)
    try:
        yield RequestTrace(tracer, root, params)
    except BaseException as exc:
        root.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        root.end()


def read_spans(path: str | Path) -> list[dict[str, Any]]:
    """Spans from a JSON-lines trace file (blank and malformed lines are reported)."""
    spans = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            spans.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON span: {exc}") from None
    return spans

"""Spans from a scripted run: exported in memory and to JSON lines, parsed back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.planner import requests_from_spans
from glimp_ray.tracing import SPAN_ANSWER, SPAN_REQUEST, SPAN_STEP, make_tracer_provider, read_spans, request_span

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def scripted() -> Collaborator:
    small = ScriptedEngine(
        "small-0", [ScriptedStep("a\n\n", 0.2), ScriptedStep("b\n\n", 2.5), ScriptedStep("c", 0.4, "think_end")]
    )
    large = ScriptedEngine("large-0", [ScriptedStep("A\n\n"), ScriptedStep("B\n\n"), ScriptedStep("C", 0, "think_end")])
    return Collaborator(small, large, CollabParams(threshold=1.0))


def traced_run(provider: TracerProvider, headers: dict[str, str] | None = None) -> Any:
    collab = scripted()
    tracer = provider.get_tracer("test")

    async def run() -> None:
        with request_span(tracer, "req-1", collab.params, headers) as request:
            async for event in collab.stream([{"role": "user", "content": "q"}], request_id="req-1"):
                request.observe(event)

    asyncio.run(run())


def test_spans_have_the_step_attributes_and_join_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced_run(provider, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count(SPAN_STEP) == 3 and names.count(SPAN_ANSWER) == 1 and names.count(SPAN_REQUEST) == 1
    root = next(s for s in spans if s.name == SPAN_REQUEST)
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == PARENT_ID
    steps = sorted((s for s in spans if s.name == SPAN_STEP), key=lambda s: s.attributes["glimp.step.index"])
    assert all(s.parent.span_id == root.context.span_id for s in steps)
    assert [s.attributes["glimp.route"] for s in steps] == ["small", "large", "small"]
    assert [s.attributes["glimp.entropy"] for s in steps] == [0.2, 2.5, 0.4]
    assert all(s.attributes["glimp.threshold"] == 1.0 for s in steps)
    assert [s.attributes["glimp.tokens.generated"] for s in steps] == [3, 3, 1]
    assert [s.attributes["glimp.replica"] for s in steps] == ["small-0", "large-0", "small-0"]
    assert steps[1].attributes["glimp.glimpse_replica"] == "small-0"
    assert root.attributes["glimp.large_step_fraction"] == 1 / 3
    assert root.attributes["glimp.stop_reason"] == "think_end"
    assert all(s.start_time <= s.end_time for s in spans)


def test_jsonl_spans_round_trip_into_planner_requests(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = make_tracer_provider("jsonl", path)
    traced_run(provider)
    traced_run(provider)
    spans = read_spans(path)
    assert len(spans) == 2 * 5
    requests = requests_from_spans(spans)
    assert len(requests) == 2
    assert [s.route for s in requests[0].steps] == ["small", "large", "small"]
    assert [s.entropy for s in requests[0].steps] == [0.2, 2.5, 0.4]
    assert requests[0].answer_route == "large" and requests[0].answer_tokens == 2

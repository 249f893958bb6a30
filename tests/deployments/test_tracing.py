"""The router's spans: one request, its steps and its answer, in the caller's trace."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from glimp_ray.planner import calibrate, requests_from_spans
from glimp_ray.tracing import read_spans


def test_router_spans_join_the_callers_trace_and_feed_the_planner(serve_app: str, trace_file: Path) -> None:
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    body = {
        "model": "glimp-tiny",
        "messages": [{"role": "user", "content": "trace me"}],
        "glimp": {"return_trace": True},
    }
    response = httpx.post(f"{serve_app}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200
    steps = response.json()["glimp"]["steps"]
    deadline = time.monotonic() + 10
    mine: list[dict] = []
    while time.monotonic() < deadline and len(mine) < len(steps) + 2:
        mine = [s for s in read_spans(trace_file) if s["trace_id"] == trace_id] if trace_file.exists() else []
        time.sleep(0.2)
    names = sorted(s["name"] for s in mine)
    assert names == sorted(["glimp.request", "glimp.answer"] + ["glimp.step"] * len(steps))
    root = next(s for s in mine if s["name"] == "glimp.request")
    assert root["parent_span_id"] == "00f067aa0ba902b7"
    routes = [
        s["attributes"]["glimp.route"]
        for s in sorted(
            (s for s in mine if s["name"] == "glimp.step"), key=lambda s: s["attributes"]["glimp.step.index"]
        )
    ]
    assert routes == [s["model"] for s in steps]
    # The planner reads the same file and sees this request as the response described it.
    requests = requests_from_spans(read_spans(trace_file))
    traced = next(r for r in requests if r.trace_id == trace_id)
    assert [s.route for s in traced.steps] == [s["model"] for s in steps]
    assert [s.tokens for s in traced.steps] == [s["tokens"] for s in steps]
    assert [s.entropy for s in traced.steps] == [s["entropy"] for s in steps]
    assert traced.answer_tokens == response.json()["glimp"]["answer"]["tokens"]
    only_mine = calibrate([traced], 0.25)
    entropies = sorted(s["entropy"] for s in steps)
    assert only_mine["steps"] == len(steps) and min(entropies) <= only_mine["threshold"] <= max(entropies)

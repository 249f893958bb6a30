"""Streaming glimpse through Serve: one small-pool call per run of easy steps, with the same greedy
output and step records as one call per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deployments.conftest import app_args

serve = pytest.importorskip("ray.serve")

PROMPTS = ["count the words in a short list", "what is six times seven", "name three colours", "add two and two"]


def deploy(tiny_pair: tuple[Path, Path], name: str, streaming: bool) -> None:
    from deployments.app import build_app

    args = app_args(tiny_pair)
    args["routing"] = {**args.get("routing", {}), "streaming_glimpse": streaming}
    args["serving"] = {
        **args["serving"],
        "small": {"num_replicas": 1, "num_cpus": 0.1},
        "large": {"num_replicas": 1, "num_cpus": 0.1},
    }
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def small_calls(app: str) -> int:
    handle = serve.get_deployment_handle("SmallPool", app_name=app)
    return int(handle.counters.remote().result()["calls"])


def run(base: str, app: str) -> list[dict[str, Any]]:
    out = []
    with httpx.Client(timeout=120) as client:
        for prompt in PROMPTS:
            body = {
                "model": "glimp-tiny",
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": 8,
                "glimp": {"return_trace": True},
            }
            response = client.post(f"{base}/{app}/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            out.append(response.json())
    return out


def test_one_call_per_run_of_easy_steps_same_output(serve_app: str, tiny_pair: tuple[Path, Path]) -> None:
    deploy(tiny_pair, "streamed", True)
    deploy(tiny_pair, "perstep", False)
    try:
        streamed, perstep = run(serve_app, "streamed"), run(serve_app, "perstep")
        for a, b in zip(streamed, perstep, strict=True):
            assert a["choices"][0]["message"] == b["choices"][0]["message"]
            steps_a, steps_b = a["glimp"]["steps"], b["glimp"]["steps"]
            assert [(s["model"], s["text"], s["tokens"], s["finish_reason"]) for s in steps_a] == [
                (s["model"], s["text"], s["tokens"], s["finish_reason"]) for s in steps_b
            ]
            assert [s["entropy"] for s in steps_a] == pytest.approx([s["entropy"] for s in steps_b], rel=1e-4)
        small_steps = sum(s["model"] == "small" for r in perstep for s in r["glimp"]["steps"])
        assert small_steps > len(PROMPTS)  # some runs hold several easy steps
        # Per step: a small call for every step glimpsed; streamed: one per run of easy steps.
        assert small_calls("streamed") < small_calls("perstep")
    finally:
        serve.delete("streamed")
        serve.delete("perstep")

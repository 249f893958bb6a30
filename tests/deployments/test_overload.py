"""Overload control on the local labelled cluster: with the large pool capped at one replica that
runs one call at a time, a load step raises τ (fewer steps go large, so the large pool's calls stop
piling up) and τ falls back once the load ends. (The latency it holds is measured by
``benchmarks/bench_overload.py``: timing is no unit test's business.)"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deployments.conftest import app_args

serve = pytest.importorskip("ray.serve")

PROMPTS = [f"question {i}: add {i} and {2 * i + 1}, then double it" for i in range(40)]


def deploy(tiny_pair: tuple[Path, Path], name: str, routing: dict[str, Any]) -> None:
    from deployments.app import build_app

    args = app_args(tiny_pair)
    args["routing"] = {**args["routing"], **routing}
    args["large"] = {**args["large"], "max_running": 1}  # one call at a time: under load, calls wait
    args["serving"] = {
        **args["serving"],
        "small": {"num_replicas": 1, "num_cpus": 0.1},
        "large": {"num_replicas": 1, "num_cpus": 0.1},
    }
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def ask(url: str, prompt: str, **glimp: Any) -> list[dict[str, Any]]:
    body = {
        "model": "glimp-tiny",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4,
        "glimp": {"return_trace": True, **glimp},
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return list(response.json()["glimp"]["steps"])


def large_share(requests: list[list[dict[str, Any]]]) -> float:
    steps = [s for steps in requests for s in steps]
    return sum(s["model"] == "large" for s in steps) / len(steps)


def test_a_load_step_raises_tau_and_it_falls_back(serve_app: str, tiny_pair: tuple[Path, Path]) -> None:
    # Calibrate on this machine: the glimpse entropies (τ: their median, so about half the steps
    # go large) and a lone large call's seconds per token.
    deploy(tiny_pair, "calibrate", {})
    try:
        url = f"{serve_app}/calibrate"
        entropies = [s["entropy"] for p in PROMPTS[:6] for s in ask(url, p, policy="small")]
        per_token = [s["latency_s"] / s["tokens"] for p in PROMPTS[:6] for s in ask(url, p, policy="large")]
    finally:
        serve.delete("calibrate")
    tau, lone = statistics.median(entropies), statistics.median(per_token)
    overload = {"max_token_s": 3 * lone, "tau_max": tau + 10, "raise_step": 5, "fall_step": 5, "window": 4}
    deploy(tiny_pair, "overload", {"threshold": tau, "overload": overload})
    try:
        url = f"{serve_app}/overload"
        light = [ask(url, p) for p in PROMPTS[:8]]
        with ThreadPoolExecutor(8) as pool:  # the load step: 8 clients at once
            heavy = list(pool.map(lambda p: ask(url, p), PROMPTS * 1))
        after = [ask(url, p) for p in PROMPTS[:16]]
    finally:
        serve.delete("overload")

    assert all(s["threshold"] == pytest.approx(tau) for steps in light for s in steps)
    assert 0.2 < large_share(light) < 0.8  # both pools write steps while the load is light
    # Under the load τ rises (to its bound at most) and fewer steps go large.
    raised = [s["threshold"] for steps in heavy for s in steps]
    assert max(raised) > tau and max(raised) <= tau + 10 + 1e-9
    assert large_share(heavy[len(heavy) // 2 :]) < large_share(light) / 2
    # Once the load ends, τ falls back to the configured one.
    assert all(s["threshold"] == pytest.approx(tau) for steps in after[-4:] for s in steps)
    assert large_share(after[-8:]) > 0.1

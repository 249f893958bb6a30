"""Shadow routing through HTTP on a router over scripted engines (no Ray): the trace's shadow
decisions per step and the ``glimp_shadow_steps`` counter the router increments for each."""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any
from unittest import mock

import httpx
import pytest

pytest.importorskip("ray")

from deployments.in_process import MODEL, router_over, serve  # noqa: E402
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep  # noqa: E402

# Ray's class-based ingress leaves a wrapper whose async __del__ Python never awaits.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'ingress.*__del__' was never awaited:RuntimeWarning")

# (entropy, top-1, top-2) of four glimpses; the acting entropy policy at τ 1.0: small, large, small, small.
SIGNALS = [(0.2, 0.9, 0.05), (2.0, 0.3, 0.25), (0.5, 0.45, 0.4), (0.1, 0.95, 0.01)]
ACTING = ["small", "large", "small", "small"]
TOP1 = ["small", "large", "large", "small"]  # top-1 below 0.5
MARGIN = ["large", "large", "large", "small"]  # margin below 0.9 (0.85, 0.05, 0.05, 0.94)


def engines() -> tuple[ScriptedEngine, ScriptedEngine]:
    ends = ["delimiter"] * 3 + ["think_end"]
    small = ScriptedEngine(
        "small",
        [
            ScriptedStep(f"s{i}" + "\n\n" * (i < 3), h, end, p1, p2)  # type: ignore[arg-type]
            for i, ((h, p1, p2), end) in enumerate(zip(SIGNALS, ends, strict=True))
        ],
    )
    large = ScriptedEngine("large", [ScriptedStep(f"L{i}\n\n") for i in range(4)], answer="42")
    return small, large


def chat(glimp: dict[str, Any]) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "q"}], "glimp": {"return_trace": True, **glimp}}


def test_the_trace_and_the_metric_carry_each_shadow_decision() -> None:
    router = router_over(*engines(), routing={"threshold": 1.0, "shadow": {"top1": 0.5, "margin": 0.9}})

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        response = await http.post(f"{base}/v1/chat/completions", json=chat({}))
        assert response.status_code == 200, response.text
        return response.json()

    with mock.patch.object(router.metrics.shadow, "inc") as inc:
        body = serve(router, scenario)
    steps = body["glimp"]["steps"]
    assert [s["model"] for s in steps] == ACTING
    assert [s["shadow"] for s in steps] == [{"margin": m, "top1": t} for m, t in zip(MARGIN, TOP1, strict=True)]
    assert [(s["entropy"], s["top1_prob"], s["top2_prob"]) for s in steps] == SIGNALS
    assert {s["policy"] for s in steps} == {"entropy"}
    # One increment per step and shadow policy, tagged with its decision and its agreement.
    counted = Counter(tuple(sorted(c.kwargs["tags"].items())) for c in inc.call_args_list)
    expected: Counter[tuple[tuple[str, str], ...]] = Counter()
    for acting, top1, margin in zip(ACTING, TOP1, MARGIN, strict=True):
        for policy, decision in (("top1", top1), ("margin", margin)):
            tags = {"policy": policy, "decision": decision, "agrees": str(decision == acting).lower()}
            expected[tuple(sorted(tags.items()))] += 1
    assert counted == expected

    # From the counts: top1 agrees on 3 of 4 steps and would send half large; margin 2 of 4, three large.
    def total(policy: str, key: str, value: str) -> int:
        return sum(n for tags, n in counted.items() if dict(tags)["policy"] == policy and dict(tags)[key] == value)

    assert [total(p, "agrees", "true") for p in ("top1", "margin")] == [3, 2]
    assert [total(p, "decision", "large") for p in ("top1", "margin")] == [2, 3]


def test_a_request_without_shadow_policies_counts_none() -> None:
    router = router_over(*engines())

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        return (await http.post(f"{base}/v1/chat/completions", json=chat({}))).json()

    with mock.patch.object(router.metrics.shadow, "inc") as inc:
        body = serve(router, scenario)
    assert all(s["shadow"] == {} for s in body["glimp"]["steps"]) and inc.call_count == 0


def test_shadow_policies_change_at_runtime_through_user_config() -> None:
    router = router_over(*engines())
    router.reconfigure({"routing": {"shadow": {"top1": 0.5}}})

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        return (await http.post(f"{base}/v1/chat/completions", json=chat({}))).json()

    body = serve(router, scenario)
    assert [s["shadow"] for s in body["glimp"]["steps"]] == [{"top1": t} for t in TOP1]
    with pytest.raises(ValueError, match="shadow policy 'verify' needs the large model"):
        router.reconfigure({"routing": {"shadow": {"verify": 0.5}}})


def test_new_shadow_policies_keep_the_online_tau_where_it_is() -> None:
    router = router_over(*engines(), routing={"threshold": 1.0, "target_large_fraction": 0.3, "tau_window": 8})
    controller = router.tau
    router.reconfigure({"routing": {"shadow": {"margin": 0.2}}})
    assert router.tau is controller and router.collab.params.shadow == (("margin", 0.2),)
    router.reconfigure({"routing": {"threshold": 0.5}})
    assert router.tau is not controller  # a routing change of its own restarts it
    del router, controller
    gc.collect()  # the ingress wrapper's __del__ warns here, under this module's filter


def test_a_request_sets_its_own_shadow_policies_seen_in_its_trace_only() -> None:
    router = router_over(*engines(), routing={"threshold": 1.0, "shadow": {"top1": 0.5}})

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        own = await http.post(f"{base}/v1/chat/completions", json=chat({"shadow": {"margin": 0.9}}))
        bad = await http.post(f"{base}/v1/chat/completions", json=chat({"shadow": {"random": 0.5}}))
        return own.json(), bad

    with mock.patch.object(router.metrics.shadow, "inc") as inc:
        body, bad = serve(router, scenario)
    assert [s["shadow"] for s in body["glimp"]["steps"]] == [{"margin": m} for m in MARGIN]
    assert inc.call_count == 0  # the metric counts the app's shadow policies, not a request's own
    assert bad.status_code == 400 and "'random' reads no signal" in bad.json()["error"]["message"]

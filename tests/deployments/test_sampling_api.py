"""Sampling fields vLLM's server takes at the top level (``top_k``, ``min_p``) reach the engines,
apart from ``glimp.top_k`` (the glimpse's k); the pre-step policy names are accepted; bad values
get a 400 naming the field. The router in process over scripted engines (no Ray)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve")

from deployments.in_process import MODEL, router_over, serve  # noqa: E402
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'ingress.*__del__' was never awaited:RuntimeWarning")

STEPS = [ScriptedStep("First.\n\n", 0.1), ScriptedStep("Second.", 0.1, "think_end")]
QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]


def engines() -> tuple[ScriptedEngine, ScriptedEngine]:
    return ScriptedEngine("small", STEPS), ScriptedEngine("large", STEPS)


def post(body: dict[str, Any], small: ScriptedEngine, large: ScriptedEngine) -> httpx.Response:
    async def scenario(base: str, http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{base}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **body})

    return serve(router_over(small, large), scenario)


def samplings(engine: ScriptedEngine) -> list[Any]:
    return [call.generate.sampling for call in engine.calls if call.generate is not None]


def test_top_k_and_min_p_reach_every_generating_call_and_leave_the_glimpse_k_alone() -> None:
    small, large = engines()
    response = post({"top_k": 7, "min_p": 0.05, "glimp": {"top_k": 3, "entropy": "topk"}}, small, large)
    assert response.status_code == 200, response.text
    calls = samplings(small) + samplings(large)
    assert calls and all(s.top_k == 7 and s.min_p == 0.05 for s in calls)
    glimpses = [call.glimpse for call in small.calls if call.glimpse is not None]
    assert glimpses and all(g.top_k == 3 for g in glimpses)


def test_unset_sampling_fields_stay_unset_for_the_models_defaults() -> None:
    small, large = engines()
    assert post({}, small, large).status_code == 200
    calls = samplings(small) + samplings(large)
    assert calls and all(s.top_k is None and s.min_p is None for s in calls)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"top_k": -1}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"glimp": {"policy": "entropyy"}}, "glimp.policy")],
)
def test_bad_sampling_values_and_unknown_policies_get_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    response = post(body, *engines())
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("policy", "tau", "large_at"), [("top1", 0.5, [False, True]), ("margin", 0.3, [True, False])])
def test_the_probability_policies_route_on_the_glimpsed_probabilities(
    policy: str, tau: float, large_at: list[bool]
) -> None:
    # Step 0: a likely token whose runner-up is close (top-1 0.9, margin 0.1); step 1: an unlikely
    # first token far ahead of the rest (top-1 0.4, margin 0.35). Below τ goes large.
    script = [ScriptedStep("First.\n\n", 0.1, top1_prob=0.9, top2_prob=0.8)]
    script.append(ScriptedStep("Second.", 0.1, "think_end", top1_prob=0.4, top2_prob=0.05))
    small, large = ScriptedEngine("small", script), ScriptedEngine("large", script)
    body = {"glimp": {"policy": policy, "threshold": tau, "return_trace": True}, "temperature": 0}
    response = post(body, small, large)
    assert response.status_code == 200, response.text
    thinking = [step for step in response.json()["glimp"]["steps"] if step["index"] >= 0]
    assert [step["model"] == "large" for step in thinking] == large_at

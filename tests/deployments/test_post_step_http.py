"""Post-step policies through HTTP on the HF engine: the router's FastAPI app over two tiny HF
engines (no Ray). A signal that never triggers answers exactly as the small model writing every
step; verify rewrites a step on the large model reusing the context its check left in the large
session's KV; the trace, the records and the metric carry each decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

pytest.importorskip("ray")

from deployments.in_process import MODEL, router_over, serve  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'ingress.*__del__' was never awaited:RuntimeWarning")

LIMITS = {"step_max_tokens": 8, "thinking_budget": 40, "answer_max_tokens": 6}


def hf_router(make_engine: Any, tiny_pair: tuple[Path, Path]) -> Any:
    small, large = make_engine("small"), make_engine("large")
    return router_over(
        small,  # type: ignore[arg-type]
        large,  # type: ignore[arg-type]
        small={"model": str(tiny_pair[0])},
        large={"model": str(tiny_pair[1])},
        routing={"threshold": 1.0, "policy": "entropy"},
        limits=LIMITS,
        # A space delimiter gives the random tiny models many short steps.
        sampling={"temperature": 0.0},
    )


def chat(glimp: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is 6 times 7?"}],
        "seed": seed,
        "glimp": {"return_trace": True, **glimp},
    }


def post_all(router: Any, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def scenario(base: str, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        out = []
        for body in bodies:
            response = await http.post(f"{base}/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            out.append(response.json())
        return out

    return serve(router, scenario)


@pytest.mark.parametrize("policy,never", [("h_step", 1e9), ("ppl_step", 1e9), ("min_prob", 0.0), ("verify", 0.0)])
def test_a_signal_that_never_triggers_answers_as_the_small_model_writing_every_step(
    make_engine: Any, tiny_pair: tuple[Path, Path], policy: str, never: float
) -> None:
    router = hf_router(make_engine, tiny_pair)
    post, small = post_all(router, [chat({"policy": policy, "threshold": never}), chat({"threshold": 1e9})])
    post_steps, small_steps = post["glimp"]["steps"], small["glimp"]["steps"]
    assert len(post_steps) > 1
    assert [s["text"] for s in post_steps] == [s["text"] for s in small_steps]  # greedy: the same thinking
    assert post["choices"][0]["message"]["content"] == small["choices"][0]["message"]["content"]
    assert all(s["model"] == "small" and not s["rewritten"] and s["policy"] == policy for s in post_steps)
    signal = {"h_step": "step_entropy", "ppl_step": "step_perplexity", "min_prob": "step_min_prob"}.get(policy)
    for step in post_steps:
        if signal is not None:
            assert step["post_signal"] == pytest.approx(step[signal])
        else:
            assert 0.0 <= step["post_signal"] <= 1.0  # verify's score: a probability
        assert step["step_entropy"] >= 0 and step["step_perplexity"] >= 1 and 0 < step["step_min_prob"] <= 1


def test_verify_rewrites_on_the_large_model_reusing_its_kv(make_engine: Any, tiny_pair: tuple[Path, Path]) -> None:
    """τ above every probability: each step is drafted, checked, and rewritten. The rewrite's
    context is a prefix of what the check prefilled, so it forwards at most a token or two."""
    router = hf_router(make_engine, tiny_pair)
    with mock.patch.object(router.metrics.rewritten, "inc") as counted:
        (body,) = post_all(router, [chat({"policy": "verify", "threshold": 2.0})])
    steps = body["glimp"]["steps"]
    assert steps and all(s["model"] == "large" and s["rewritten"] for s in steps)
    for step in steps:
        assert step["draft_tokens"] > 0 and step["check_prefill_tokens"] > 0
        assert step["prefill_tokens"] <= 2 < step["check_prefill_tokens"]
        assert step["reused_tokens"] >= step["context_tokens"] - 2
        # The prefill ratio: what the rewrite forwarded over what its context holds.
        assert step["prefill_tokens"] / step["context_tokens"] <= 1
    assert [c.kwargs["tags"] for c in counted.call_args_list] == [{"policy": "verify", "rewritten": "true"}] * len(
        steps
    )


def test_bad_post_step_requests_are_refused_by_name(make_engine: Any, tiny_pair: tuple[Path, Path]) -> None:
    router = hf_router(make_engine, tiny_pair)

    async def scenario(base: str, http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post(f"{base}/v1/chat/completions", json=chat({"policy": "h_stepp"})),
            await http.post(f"{base}/v1/chat/completions", json=chat({"shadow": {"verify": 0.5}})),
        ]

    unknown, shadow = serve(router, scenario)
    assert unknown.status_code == 400 and "policy" in unknown.text
    assert shadow.status_code == 400 and "verify" in shadow.text

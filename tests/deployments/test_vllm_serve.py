"""The Serve application with both pools on vLLM: ``configs/demo-vllm.yaml`` as shipped (the demo
pair on vLLM's CPU build), answered through HTTP by the official openai client.

Runs where vLLM is installed (``make test-vllm``); skipped elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")
serve = pytest.importorskip("ray.serve")

from glimp_ray.demo.task import make_split, verify  # noqa: E402
from tests.deployments.conftest import free_port  # noqa: E402

CONFIG = Path(__file__).parent.parent.parent / "configs" / "demo-vllm.yaml"
APP = "glimp-vllm"


@pytest.fixture(scope="module")
def vllm_app(ray_cluster: str) -> Iterator[str]:
    """configs/demo-vllm.yaml's application, greedy, on the test session's Ray cluster."""
    from deployments.app import build_app

    args: dict[str, Any] = yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]
    args["sampling"] = {"temperature": 0.0}
    args["serving"]["small"]["num_cpus"] = args["serving"]["large"]["num_cpus"] = 0.1
    args["serving"]["router"] = {"num_cpus": 0.1}
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(APP)
        serve.shutdown()


def client(base: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def test_the_demo_pair_on_vllm_answers_the_openai_client(vllm_app: str) -> None:
    problems = make_split("test", 4)
    models: set[str] = set()
    correct = 0
    for problem in problems:
        response = client(vllm_app).chat.completions.create(
            model="glimp-demo", messages=problem.messages(), extra_body={"glimp": {"return_trace": True}}
        )
        trace = response.model_extra["glimp"]
        steps = trace["steps"]
        assert trace["entropy"] == "topk" and steps
        # Top-20 renormalised entropy: between 0 and ln 20 on every glimpsed step.
        assert all(0 <= s["entropy"] <= math.log(20) + 1e-9 for s in steps if s["entropy"] is not None)
        # Each session's prefix comes back from vLLM's prefix cache after its first call.
        assert any(s["reused_tokens"] > 0 for s in steps[1:]) or len(steps) == 1
        models |= {s["model"] for s in steps}
        correct += verify(response.choices[0].message.content, problem.answer)
    assert models == {"small", "large"}  # τ on the top-20 scale sends some steps each way
    assert correct >= 3  # the demo large model alone is ~99% accurate on this task


def test_streaming_through_vllm_pools_gives_the_same_greedy_text(vllm_app: str) -> None:
    messages = make_split("test", 1)[0].messages()
    stream = client(vllm_app).chat.completions.create(model="glimp-demo", messages=messages, stream=True)
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client(vllm_app).chat.completions.create(model="glimp-demo", messages=messages)
    assert content and full.choices[0].message.content == content


def test_post_step_policies_through_http_on_vllm(vllm_app: str) -> None:
    """h_step whose τ no step reaches writes what the small model writes alone (greedy); verify
    above any probability has the large model rewrite every step; the trace carries both."""
    messages = make_split("test", 1)[0].messages()

    def trace(glimp: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        response = client(vllm_app).chat.completions.create(
            model="glimp-demo", messages=messages, extra_body={"glimp": {"return_trace": True, **glimp}}
        )
        return response.choices[0].message.content, response.model_extra["glimp"]["steps"]

    never, never_steps = trace({"policy": "h_step", "threshold": 1e9})
    alone, alone_steps = trace({"policy": "entropy", "threshold": 1e9})
    assert [s["text"] for s in never_steps] == [s["text"] for s in alone_steps] and never == alone
    assert all(s["model"] == "small" and not s["rewritten"] for s in never_steps)
    assert all(
        0 <= s["step_entropy"] <= math.log(20) + 1e-9 and s["post_signal"] == s["step_entropy"] for s in never_steps
    )
    _, verified = trace({"policy": "verify", "threshold": 2.0})
    assert verified and all(s["rewritten"] and s["model"] == "large" for s in verified)
    assert all(0 <= s["post_signal"] <= 1 and s["prefill_tokens"] <= s["context_tokens"] for s in verified)

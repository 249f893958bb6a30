"""Streamed answers over the default path (streaming glimpse) through the router's HTTP API, in
process over scripted engines (no Ray): a failure mid-stream is an SSE error event in OpenAI's
shape and the stream still ends with ``[DONE]``; streamed ``/v1/completions`` carries what the
whole response does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

pytest.importorskip("ray")

from deployments.in_process import MODEL, router_over, serve  # noqa: E402
from glimp_ray.engine.base import EngineError, InvalidRequestError  # noqa: E402
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep  # noqa: E402
from glimp_ray.pool_clients import PoolUnavailableError  # noqa: E402
from glimp_ray.step_run import StepRun, run_steps  # noqa: E402
from glimp_ray.types import StepRequest, StepResult  # noqa: E402

# Ray's class-based ingress leaves a wrapper whose async __del__ Python never awaits.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'ingress.*__del__' was never awaited:RuntimeWarning")

QUESTION = [{"role": "user", "content": "What is 6 x 7?"}]
# Under the router's τ = 1.0 every step is easy: one run of the small pool writes them all.
STEPS = [
    ScriptedStep("First, 6 x 7.\n\n", 0.5),
    ScriptedStep("That is 42.\n\n", 0.2),
    ScriptedStep("Done.", 0.1, "think_end"),
]


class RunningEngine(ScriptedEngine):
    """Serves runs of easy steps itself (step_run's run over its ``step``), as the real engines
    do, counting the runs opened: the loop took the streaming glimpse."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.runs = 0

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        self.runs += 1
        async for result in run_steps(self, request, run):
            yield result


def engines(fail: Any = None) -> tuple[RunningEngine, ScriptedEngine]:
    small = RunningEngine("small", STEPS, answer="The answer is 42.", fail=fail)
    large = ScriptedEngine("large", [ScriptedStep("L\n\n")], answer="The answer is 42.")
    return small, large


def events(body: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, in order (``[DONE]`` as that string)."""
    payloads = [line.removeprefix("data: ") for line in body.split("\n") if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def post(small: ScriptedEngine, large: ScriptedEngine, path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async def scenario(base: str, http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.post(f"{base}{path}", json={"model": MODEL, **body}) for body in bodies]

    return serve(router_over(small, large), scenario)


def reasoning(chunks: list[Any]) -> str:
    deltas = [c["choices"][0].get("delta", c["choices"][0]) for c in chunks if isinstance(c, dict) and c.get("choices")]
    return "".join(d.get("reasoning_content") or "" for d in deltas)


@pytest.mark.parametrize(
    ("error", "type_", "code"),
    [
        (EngineError("engine step loop failed"), "internal_error", None),
        (
            PoolUnavailableError("the small pool is unavailable: ActorDiedError"),
            "service_unavailable",
            "pool_unavailable",
        ),
    ],
)
def test_a_failure_mid_stream_is_an_error_event_and_the_stream_still_ends(
    error: Exception, type_: str, code: str | None
) -> None:
    # From the run's second step on every small call fails: the step made on its own fails too.
    small, large = engines(fail=lambda i, request: error if i >= 1 else None)
    (response,) = post(small, large, "/v1/chat/completions", [{"messages": QUESTION, "stream": True}])
    assert response.status_code == 200  # the stream had started: the error travels in-band
    sent = events(response.text)
    assert sent[-1] == "[DONE]" and sent.count("[DONE]") == 1
    failure = sent[-2]
    assert set(failure) == {"error"} and set(failure["error"]) == {"message", "type", "param", "code"}
    assert failure["error"]["type"] == type_ and failure["error"]["code"] == code
    assert str(error) in failure["error"]["message"]
    assert reasoning(sent[:-2]) == "First, 6 x 7.\n\n"  # the step written before the failure
    assert not any(c["choices"][0].get("finish_reason") for c in sent[:-2])  # no answer was claimed
    assert small.runs == 1 and len(small.calls) == 3  # the run's 2 steps, then the failed one on its own
    assert small.released == [small.calls[0].session_id]  # the session is released all the same


def test_an_engine_error_mid_run_is_recovered_in_a_stream() -> None:
    failed: set[str] = set()

    def fails_once(index: int, request: StepRequest) -> Exception | None:
        """Each request's second step fails the first time it is written."""
        if request.transcript != STEPS[0].text or request.session_id in failed:
            return None
        failed.add(request.session_id)
        return EngineError("engine step loop failed")

    small, large = engines(fails_once)
    whole, streamed = post(
        small, large, "/v1/chat/completions", [{"messages": QUESTION}, {"messages": QUESTION, "stream": True}]
    )
    assert len(failed) == 2  # both requests met the failure
    assert small.runs == 4  # each: the failed run, then a new one after its step made on its own
    assert whole.status_code == streamed.status_code == 200
    message = whole.json()["choices"][0]["message"]
    sent = events(streamed.text)
    assert sent[-1] == "[DONE]" and not any("error" in c for c in sent[:-1])
    assert reasoning(sent[:-1]) == message["reasoning_content"] == "First, 6 x 7.\n\nThat is 42.\n\nDone."
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in sent[:-1] if c.get("choices"))
    assert content == message["content"] == "The answer is 42."


def test_a_refusal_mid_stream_is_the_clients_error_event() -> None:
    refuse = lambda i, request: InvalidRequestError("the transcript is refused") if i == 1 else None  # noqa: E731
    small, large = engines(refuse)
    (response,) = post(small, large, "/v1/chat/completions", [{"messages": QUESTION, "stream": True}])
    sent = events(response.text)
    assert sent[-1] == "[DONE]"
    assert sent[-2]["error"]["type"] == "invalid_request_error"
    assert "the transcript is refused" in sent[-2]["error"]["message"]
    assert small.runs == 1 and len(small.calls) == 2  # not retried as a call of its own


def test_streamed_completions_carry_the_whole_responses_text() -> None:
    body = {"prompt": "What is 6 x 7?", "max_tokens": 64, "temperature": 0}
    small, large = engines()
    whole, streamed = post(small, large, "/v1/completions", [body, {**body, "stream": True}])
    assert whole.status_code == streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    choice = whole.json()["choices"][0]
    sent = events(streamed.text)
    assert sent[-1] == "[DONE]" and sent.count("[DONE]") == 1
    chunks = sent[:-1]
    assert len(chunks) > 3 and all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] or "" for c in chunks) == choice["text"] == "The answer is 42."
    assert reasoning(chunks) == choice["reasoning_content"] == "First, 6 x 7.\n\nThat is 42.\n\nDone."
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == choice["finish_reason"] == "stop"
    assert small.runs == 2  # both took the streaming glimpse: one run of easy steps each

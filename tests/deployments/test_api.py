"""The OpenAI-compatible API through HTTP, with the official client and raw requests."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")

MODEL = "glimp-tiny"
QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]


def client(base: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_health_and_models(serve_app: str) -> None:
    assert httpx.get(f"{serve_app}/health").json() == {"status": "ok"}
    models = client(serve_app).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_with_trace(serve_app: str) -> None:
    response = client(serve_app).chat.completions.create(
        model=MODEL, messages=QUESTION, extra_body={"glimp": {"return_trace": True}}
    )
    message = response.choices[0].message
    trace = response.model_extra["glimp"]
    reasoning = message.model_extra["reasoning_content"]
    assert response.object == "chat.completion" and response.choices[0].finish_reason in ("stop", "length")
    assert message.content == response.choices[0].message.content and isinstance(message.content, str)
    assert reasoning == "".join(s["text"] for s in trace["steps"]).rstrip()
    assert trace["threshold"] == 3.2 and trace["policy"] == "entropy" and trace["steps"]
    assert {"index", "model", "entropy", "tokens", "latency_s", "replica"} <= set(trace["steps"][0])
    thinking = sum(s["tokens"] for s in trace["steps"])
    assert response.usage.completion_tokens == thinking + trace["answer"]["tokens"]
    assert response.usage.prompt_tokens > 0


def test_per_request_knobs(serve_app: str) -> None:
    response = client(serve_app).chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        extra_body={"glimp": {"policy": "large", "mode": "paper", "return_trace": True}},
    )
    trace = response.model_extra["glimp"]
    assert trace["policy"] == "large" and trace["mode"] == "paper"
    assert {s["model"] for s in trace["steps"]} == {"large"}


def test_the_reference_preset_and_the_entropy_per_request(serve_app: str) -> None:
    def trace(glimp: dict[str, Any]) -> dict[str, Any]:
        body = {"model": MODEL, "messages": QUESTION, "glimp": {**glimp, "return_trace": True}}
        response = httpx.post(f"{serve_app}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["glimp"]  # type: ignore[no-any-return]

    reference = trace({"preset": "reference"})
    assert (reference["preset"], reference["entropy"], reference["top_k"]) == ("reference", "topk", 20)
    topk = trace({"entropy": "topk", "top_k": 5})
    assert (topk["preset"], topk["entropy"], topk["top_k"]) == ("glimp", "topk", 5)
    conflict = {"model": MODEL, "messages": QUESTION, "glimp": {"preset": "reference", "entropy": "full"}}
    response = httpx.post(f"{serve_app}/v1/chat/completions", json=conflict, timeout=60)
    assert response.status_code == 400 and "preset reference" in error_of(response)["message"]


def test_a_seed_makes_random_routing_reproducible(serve_app: str) -> None:
    def routes() -> list[str]:
        body = {"model": MODEL, "messages": QUESTION, "seed": 7, "glimp": {"policy": "random", "return_trace": True}}
        steps = httpx.post(f"{serve_app}/v1/chat/completions", json=body, timeout=120).json()["glimp"]["steps"]
        return [s["model"] for s in steps]

    assert routes() == routes()  # two requests, two random request ids, one seed


def test_chat_streaming_ends_with_usage_and_done(serve_app: str) -> None:
    stream = client(serve_app).chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert reasoning and isinstance(content, str)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    # The same request without streaming gives the same text (greedy).
    full = client(serve_app).chat.completions.create(model=MODEL, messages=QUESTION)
    assert full.choices[0].message.content == content
    assert full.choices[0].message.model_extra["reasoning_content"] == reasoning.rstrip()


def test_raw_stream_is_sse_and_ends_with_done(serve_app: str) -> None:
    body = {"model": MODEL, "messages": QUESTION, "stream": True}
    with httpx.stream("POST", f"{serve_app}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[1][6:])["object"] == "chat.completion.chunk"


def test_completions(serve_app: str) -> None:
    response = client(serve_app).completions.create(model=MODEL, prompt="Question: 6 x 7 = ?\n")
    assert response.object == "text_completion" and isinstance(response.choices[0].text, str)
    assert response.choices[0].model_extra["reasoning_content"]
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": "hi"}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, 400, "messages.0.content"),
        ({"model": MODEL, "messages": QUESTION, "temperature": 3}, 400, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "n": 9}, 400, "n"),  # over max_choices
        ({"model": MODEL, "messages": QUESTION, "seed": 2**70}, 400, "seed"),
        ({"model": "gpt-9", "messages": QUESTION}, 404, "model"),
        ({"model": MODEL, "messages": QUESTION, "glimp": {"policy": "clever"}}, 400, "glimp.policy"),
        ({"model": MODEL, "messages": QUESTION, "glimp": {"entropy": "partial"}}, 400, "glimp.entropy"),
        ({"model": MODEL, "messages": QUESTION, "glimp": {"top_k": 21}}, 400, "glimp.top_k"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x " * 2000}]}, 400, "messages"),
    ],
)
def test_bad_input_gets_an_openai_error(serve_app: str, body: dict[str, Any], status: int, param: str) -> None:
    response = httpx.post(f"{serve_app}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status
    assert error_of(response)["param"] == param


def test_malformed_json_and_the_server_keeps_serving(serve_app: str) -> None:
    response = httpx.post(
        f"{serve_app}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in error_of(response)["message"]
    too_long = httpx.post(
        f"{serve_app}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x " * 2000}]},
        timeout=60,
    )
    assert error_of(too_long)["code"] == "context_length_exceeded"
    # The replica's error message, not Ray's wrapped traceback.
    assert error_of(too_long)["message"].startswith("prompt and transcript are")
    completion = httpx.post(f"{serve_app}/v1/completions", json={"model": MODEL, "prompt": "x " * 2000}, timeout=60)
    assert completion.status_code == 400 and error_of(completion)["param"] == "prompt"
    ok = client(serve_app).chat.completions.create(model=MODEL, messages=QUESTION)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_a_pool_that_times_out_gives_503(timeout_app: str) -> None:
    body = {"model": MODEL, "messages": QUESTION}
    response = httpx.post(f"{timeout_app}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "pool_unavailable" and "did not answer within" in error["message"]
    streamed = httpx.post(f"{timeout_app}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    assert streamed.status_code == 503  # the first step fails before the stream starts


def test_bad_app_args_name_the_field() -> None:
    from deployments.app import build_app
    from glimp_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"serving\.large\.num_gpus"):
        build_app({"serving": {"large": {"num_gpus": -1}}})

"""The request surface real clients send (LangChain, litellm, lm-eval, the openai client), with
vLLM's OpenAI server as the reference, and the limits no single request can break."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.deployments.conftest import REQUEST_LIMITS

openai = pytest.importorskip("openai")

MODEL = "glimp-tiny"
QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]


def post(base: str, body: Any, path: str = "/v1/chat/completions", **kwargs: Any) -> httpx.Response:
    if not isinstance(body, dict):  # raw bytes, or an iterator of chunks
        return httpx.post(
            f"{base}{path}", content=body, headers={"content-type": "application/json"}, timeout=120, **kwargs
        )
    return httpx.post(f"{base}{path}", json=body, timeout=120, **kwargs)


def chat(base: str, **fields: Any) -> httpx.Response:
    return post(base, {"model": MODEL, "messages": QUESTION, **fields})


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def answer_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_text_parts_are_joined_like_a_string(serve_app: str) -> None:
    parts = [{"type": "text", "text": "What is 6"}, {"type": "text", "text": "times 7?"}]
    as_parts = post(serve_app, {"model": MODEL, "messages": [{"role": "user", "content": parts}]})
    as_text = post(serve_app, {"model": MODEL, "messages": [{"role": "user", "content": "What is 6\ntimes 7?"}]})
    assert answer_of(as_parts) == answer_of(as_text)
    assert as_parts.json()["usage"] == as_text.json()["usage"]


def test_a_non_text_part_is_refused_by_name(serve_app: str) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "What is this?"}, image]
    response = post(serve_app, {"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages.0.content" and "'image_url'" in error["message"]


def test_stop_ends_the_answer_and_is_left_out(serve_app: str) -> None:
    free = answer_of(chat(serve_app))
    cut_at = next(i for i, c in enumerate(free) if i > 0 and not c.isspace())
    stop = free[cut_at]
    expected = free[: free.index(stop)].strip()
    as_string = chat(serve_app, stop=stop, glimp={"return_trace": True})
    as_list = chat(serve_app, stop=[stop, "never-seen-stop"])
    assert answer_of(as_string) == expected == answer_of(as_list)
    assert as_string.json()["choices"][0]["finish_reason"] == "stop"
    # The thinking is not cut by the stop string.
    plain = chat(serve_app, glimp={"return_trace": True}).json()
    with_stop = as_string.json()
    assert (
        with_stop["choices"][0]["message"]["reasoning_content"] == plain["choices"][0]["message"]["reasoning_content"]
    )


@pytest.mark.parametrize(
    ("stop", "why"),
    [(5, "valid string"), ([f"s{i}" for i in range(17)], "at most 16"), ([""], "non-empty"), ([1], "valid string")],
)
def test_bad_stop_values_are_refused(serve_app: str, stop: Any, why: str) -> None:
    response = chat(serve_app, stop=stop)
    assert response.status_code == 400
    assert error_of(response)["param"].startswith("stop") and why in error_of(response)["message"]


def test_models_retrieve_and_unknown_model(serve_app: str) -> None:
    client = openai.OpenAI(base_url=f"{serve_app}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nothing-here", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405)],
)
def test_unknown_paths_and_methods_get_openai_errors(serve_app: str, method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{serve_app}{path}", timeout=30)
    assert response.status_code == status
    assert path in error_of(response)["message"]


def test_a_body_over_the_limit_is_refused_before_parsing(serve_app: str) -> None:
    limit = REQUEST_LIMITS["max_request_bytes"]
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * limit}]}).encode()
    declared = post(serve_app, big)
    assert declared.status_code == 413 and error_of(declared)["code"] == "request_too_large"

    def chunks() -> Any:  # no content-length: the body is counted as it arrives
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    chunked = post(serve_app, chunks())
    assert chunked.status_code == 413 and error_of(chunked)["code"] == "request_too_large"
    assert answer_of(chat(serve_app)) is not None  # still serving


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "glimp-tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b"",
        b'{"model": "glimp-tiny", "messages": [{"role": "user", "content": "hi"}]',
    ],
    ids=["invalid-utf8", "deeply-nested", "empty", "truncated"],
)
def test_unparseable_bodies_get_openai_errors(serve_app: str, raw: bytes) -> None:
    response = post(serve_app, raw)
    assert response.status_code == 400
    assert "not valid JSON" in error_of(response)["message"]


@pytest.mark.parametrize("threshold", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_refused(serve_app: str, threshold: bytes) -> None:
    body = b'{"model": "glimp-tiny", "messages": [{"role": "user", "content": "hi"}], "glimp": {"threshold": %s}}'
    response = post(serve_app, body % threshold)
    assert response.status_code == 400 and error_of(response)["param"] == "glimp.threshold"


@pytest.mark.parametrize("seed", [2**62, 2**63 - 1, -(2**63), -5, 0])
def test_any_int64_seed_is_taken(serve_app: str, seed: int) -> None:
    assert answer_of(chat(serve_app, seed=seed, temperature=0.7)) is not None


def test_a_seed_makes_sampling_reproducible(serve_app: str) -> None:
    first = chat(serve_app, seed=2**40 + 3, temperature=1.0, glimp={"return_trace": True}).json()
    second = chat(serve_app, seed=2**40 + 3, temperature=1.0, glimp={"return_trace": True}).json()
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"temperature": "0.5"}, "temperature"),
        ({"glimp": {"return_trace": "true"}}, "glimp.return_trace"),
        ({"glimp": {"threshold": "nan"}}, "glimp.threshold"),
        ({"glimp": {"threshold": "Infinity"}}, "glimp.threshold"),
        ({"glimp": {"thinking_budget": 10**9}}, "glimp.thinking_budget"),
        ({"glimp": {"thinking_budget": REQUEST_LIMITS["max_thinking_budget"] + 1}}, "glimp.thinking_budget"),
        ({"glimp": {"step_max_tokens": REQUEST_LIMITS["max_step_tokens"] + 1}}, "glimp.step_max_tokens"),
        ({"max_tokens": REQUEST_LIMITS["max_answer_tokens"] + 1}, "max_tokens"),
        ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 5}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": {"name": "f"}}},
            "tool_choice",
        ),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"42": 10}}, "logit_bias"),
        ({"n": REQUEST_LIMITS["max_choices"] + 1}, "n"),
        ({"n": 0}, "n"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(serve_app: str, fields: dict[str, Any], param: str) -> None:
    response = chat(serve_app, **fields)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


@pytest.mark.parametrize(
    "fields",
    [
        {"user": "someone", "metadata": {"k": "v"}, "store": False, "service_tier": "auto"},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
        {"response_format": {"type": "text"}, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0},
        {"parallel_tool_calls": True, "stream_options": None, "reasoning_effort": "low"},
    ],
)
def test_harmless_fields_are_accepted(serve_app: str, fields: dict[str, Any]) -> None:
    assert answer_of(chat(serve_app, **fields)) is not None


def test_null_and_list_content_and_other_roles(serve_app: str) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "And 6 times 7?", "name": "someone"},
    ]
    assert answer_of(post(serve_app, {"model": MODEL, "messages": messages})) is not None


def test_completions_refuse_what_they_cannot_honour_by_name(serve_app: str) -> None:
    for fields, param in (
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[1], "a"]}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),  # outside the vocabulary
        ({"prompt": ["a"] * (REQUEST_LIMITS["max_choices"] + 1)}, "prompt"),
        ({"prompt": ["a", "b"], "n": REQUEST_LIMITS["max_choices"] // 2 + 1}, "prompt"),
        ({"prompt": "hi", "logprobs": 1}, "logprobs"),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": "hi", "best_of": 2}, "best_of"),
    ):
        response = post(serve_app, {"model": MODEL, **fields}, path="/v1/completions")
        assert response.status_code == 400 and error_of(response)["param"] == param, (fields, response.text)


def test_a_prompt_over_the_character_limit_is_refused_before_the_pools(serve_app: str) -> None:
    content = "y" * (REQUEST_LIMITS["max_prompt_chars"] + 1)
    response = post(serve_app, {"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"
    assert "characters" in error["message"]


def test_thinking_that_fills_the_context_gets_an_answer_not_a_400(serve_app: str) -> None:
    # The tiny small model has a 1024-token context and never closes its thinking by itself.
    messages = [{"role": "user", "content": "a" * 990}]
    for policy in ("small", "entropy"):
        for stream in (False, True):
            body = {
                "model": MODEL,
                "messages": messages,
                "stream": stream,
                "glimp": {"policy": policy, "thinking_budget": 4000, "return_trace": True},
            }
            response = post(serve_app, body)
            assert response.status_code == 200, response.text
            if stream:
                lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
                assert lines[-1] == "data: [DONE]"
                final = json.loads(lines[-2][6:])
                assert "error" not in final and final["choices"][0]["finish_reason"] in ("stop", "length")
                trace = final["glimp"]
            else:
                trace = response.json()["glimp"]
            assert trace["stop_reason"] == "context"

"""Several choices in one request (``n``, a list of prompts), token-id prompts, and vLLM's
tokenizer endpoints, as eval harnesses (lm-eval's ``local-completions``) use them."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.deployments.test_disconnects import replica_stats, session_counts

openai = pytest.importorskip("openai")

MODEL = "glimp-tiny"
QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]
PROMPTS = ["Question: 6 x 7 = ?\n", "Question: 12 + 30 = ?\n"]


def post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{base}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def sse(base: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("POST", f"{base}{path}", json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_n_choices_are_a_prompts_seeds_in_turn(serve_app: str) -> None:
    body = {"model": MODEL, "messages": QUESTION, "temperature": 1.0, "seed": 11, "glimp": {"return_trace": True}}
    together = post(serve_app, "/v1/chat/completions", {**body, "n": 3})
    alone = [post(serve_app, "/v1/chat/completions", {**body, "seed": 11 + k}) for k in range(3)]
    assert [c["index"] for c in together["choices"]] == [0, 1, 2]
    for choice, single in zip(together["choices"], alone, strict=True):
        assert choice["message"] == single["choices"][0]["message"]
        # With several choices each carries its own trace; the response has none of its own.
        routed = [(s["model"], s["text"]) for s in choice["glimp"]["steps"]]
        assert routed == [(s["model"], s["text"]) for s in single["glimp"]["steps"]]
    assert "glimp" not in together
    # The prompt is counted once, the completions of every choice.
    assert together["usage"]["prompt_tokens"] == alone[0]["usage"]["prompt_tokens"]
    assert together["usage"]["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in alone)
    # Sampled at temperature 1 from different seeds, the choices differ.
    assert len({c["message"]["reasoning_content"] for c in together["choices"]}) > 1


def test_a_list_of_prompts_gets_each_prompts_choices_in_order(serve_app: str) -> None:
    body = {"model": MODEL, "temperature": 1.0, "seed": 5, "max_tokens": 6}
    batch = post(serve_app, "/v1/completions", {**body, "prompt": PROMPTS, "n": 2})
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for i, prompt in enumerate(PROMPTS):
        for k in range(2):
            single = post(serve_app, "/v1/completions", {**body, "prompt": prompt, "seed": 5 + k})
            choice = batch["choices"][i * 2 + k]
            assert (choice["text"], choice["reasoning_content"]) == (
                single["choices"][0]["text"],
                single["choices"][0]["reasoning_content"],
            )
            usage["completion_tokens"] += single["usage"]["completion_tokens"]
        usage["prompt_tokens"] += single["usage"]["prompt_tokens"]
    assert {k: batch["usage"][k] for k in usage} == usage


def test_streamed_choices_interleave_and_each_matches_its_plain_answer(serve_app: str) -> None:
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "n": 3,
        "temperature": 1.0,
        "seed": 3,
        "stream_options": {"include_usage": True},
    }
    plain = post(serve_app, "/v1/chat/completions", body)
    chunks = sse(serve_app, "/v1/chat/completions", body)
    reasoning = {i: "" for i in range(3)}
    content = {i: "" for i in range(3)}
    finished = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        delta, i = choice["delta"], choice["index"]
        assert i not in finished, "a choice's chunk came after its finish"
        reasoning[i] += delta.get("reasoning_content") or ""
        content[i] += delta.get("content") or ""
        if choice["finish_reason"] is not None:
            finished[i] = choice["finish_reason"]
    for choice in plain["choices"]:
        i = choice["index"]
        assert (reasoning[i], content[i], finished[i]) == (
            choice["message"]["reasoning_content"],
            choice["message"]["content"],
            choice["finish_reason"],
        )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_token_id_prompts_are_the_served_models_tokens(serve_app: str) -> None:
    info = httpx.get(f"{serve_app}/tokenizer_info", timeout=60).json()
    assert info["eos_token"] and info["model_max_length"] > 0 and "chat_template" in info
    ids = post(serve_app, "/tokenize", {"prompt": PROMPTS[0], "add_special_tokens": False})
    assert ids["count"] == len(ids["tokens"]) > 0 and ids["max_model_len"] == info["model_max_length"]
    assert post(serve_app, "/detokenize", {"tokens": ids["tokens"]})["prompt"] == PROMPTS[0]
    strs = post(serve_app, "/tokenize", {"prompt": PROMPTS[0], "return_token_strs": True})["token_strs"]
    assert isinstance(strs, list) and all(isinstance(s, str) for s in strs) and strs
    chat = post(serve_app, "/tokenize", {"messages": QUESTION})
    question = post(serve_app, "/tokenize", {"prompt": QUESTION[0]["content"], "add_special_tokens": False})
    assert chat["count"] > question["count"]  # the chat template wraps the question

    greedy = {"model": MODEL, "temperature": 0, "max_tokens": 6}
    as_text = post(serve_app, "/v1/completions", {**greedy, "prompt": PROMPTS[0]})
    as_ids = post(serve_app, "/v1/completions", {**greedy, "prompt": ids["tokens"]})
    as_batch = post(serve_app, "/v1/completions", {**greedy, "prompt": [ids["tokens"]]})
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"] == as_batch["choices"][0]["text"]


def test_tokenizer_endpoints_refuse_bad_input(serve_app: str) -> None:
    for path, body, param in (
        ("/tokenize", {}, None),
        ("/tokenize", {"prompt": "a", "messages": QUESTION}, None),
        ("/tokenize", {"prompt": "a", "model": "other"}, "model"),
        ("/detokenize", {"tokens": []}, "tokens"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens.0"),
    ):
        response = httpx.post(f"{serve_app}{path}", json=body, timeout=60)
        assert response.status_code in (400, 404), (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.text)


def test_lm_eval_local_completions_payload(serve_app: str) -> None:
    """What lm-eval's local-completions sends for generate_until with its remote tokenizer: token
    ids in a batch, five stop strings (the task's and the EOS), a seed."""
    eos = httpx.get(f"{serve_app}/tokenizer_info", timeout=60).json()["eos_token"]
    batch = [post(serve_app, "/tokenize", {"prompt": p, "add_special_tokens": False})["tokens"] for p in PROMPTS]
    body = {
        "prompt": batch,
        "model": MODEL,
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["Question:", "</s>", "<|im_end|>", "\n\n", eos],
        "seed": 1234,
    }
    out = post(serve_app, "/v1/completions", body)
    assert sorted(c["index"] for c in out["choices"]) == [0, 1]
    assert all(isinstance(c["text"], str) for c in out["choices"])


def test_the_openai_client_gets_every_choice(serve_app: str) -> None:
    client = openai.OpenAI(base_url=f"{serve_app}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model=MODEL, messages=QUESTION, n=2, temperature=0)  # type: ignore[arg-type]
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy: alike
    text = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=4, temperature=0)
    assert [c.index for c in text.choices] == [0, 1]


def long_thinking(serve_app: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``body`` sampled with a seed whose choices think long enough to be stopped midway (about
    half the seeds do); the body and its completion tokens."""
    body = {**body, "temperature": 1.0, "glimp": {"thinking_budget": 5000, "step_max_tokens": 3}}
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    for seed in (34, 35, 36, 15, 16, 17, 2, 1):
        full = post(serve_app, path, {**body, "seed": seed})["usage"]["completion_tokens"]
        if full > 600:
            return {**body, "seed": seed}, full
    raise AssertionError("no seed made the tiny models think long")


def settled(before: dict[str, int]) -> int:
    """The tokens the pools have generated, once every session is back to what it was."""
    deadline = time.monotonic() + 30
    while session_counts() != before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_counts() == before
    return generated_tokens()


def test_a_failing_choice_stops_the_others_and_leaves_no_session_behind(serve_app: str) -> None:
    before = session_counts()
    body, full = long_thinking(serve_app, {"model": MODEL, "prompt": PROMPTS[0], "n": 4})
    # The tiny small model's context is 1024 tokens: the second prompt cannot be served.
    at_start = generated_tokens()
    response = httpx.post(f"{serve_app}/v1/completions", json={**body, "prompt": [PROMPTS[0], "seven " * 3000]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert settled(before) - at_start < full / 2  # the first prompt's choices were stopped


def generated_tokens() -> int:
    return sum(counters["generated_tokens"] for counters in replica_stats().values())


def test_hanging_up_on_several_choices_stops_them_and_leaves_no_session_behind(serve_app: str) -> None:
    before = session_counts()
    body, full = long_thinking(serve_app, {"model": MODEL, "messages": QUESTION, "n": 4})
    with httpx.stream("POST", f"{serve_app}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 9:
                break
    at_hang_up = generated_tokens()
    assert settled(before) - at_hang_up < full / 2  # stopped with the client, not run to their end

    with pytest.raises(httpx.TimeoutException):  # not streamed: gone while the choices still think
        httpx.post(f"{serve_app}/v1/chat/completions", json=body, timeout=0.3)
    at_hang_up = generated_tokens()
    assert settled(before) - at_hang_up < full / 2

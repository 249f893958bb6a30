"""API keys through HTTP: 401 in OpenAI's error shape without a valid key, clients unchanged with
one, /health open, and the key's name (never the key) on the request's span."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.auth import sha256_hex
from tests.deployments.conftest import app_args

openai = pytest.importorskip("openai")
serve = pytest.importorskip("ray.serve")

KEYS = {"team-a": "sk-team-a-0123456789", "ci": "sk-ci-abcdef"}
QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]


@pytest.fixture(scope="module")
def keyed(serve_app: str, tiny_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from deployments.app import build_app

    traces = tmp_path_factory.mktemp("keyed") / "spans.jsonl"
    args = app_args(tiny_pair, traces)
    args["serving"]["api_keys"] = [{"name": name, "key_sha256": sha256_hex(key)} for name, key in KEYS.items()]
    serve.run(build_app(args), name="keyed", route_prefix="/keyed")
    try:
        yield f"{serve_app}/keyed", traces
    finally:
        serve.delete("keyed")


def test_requests_without_or_with_a_wrong_key_get_401(keyed: Any) -> None:
    url, _ = keyed
    chat = {"model": "glimp-tiny", "messages": QUESTION, "max_tokens": 4}
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEYS['ci']}"}):
        for method, path, body in (
            ("POST", "/v1/chat/completions", chat),
            ("POST", "/v1/completions", {"model": "glimp-tiny", "prompt": "hi"}),
            ("GET", "/v1/models", None),
            ("POST", "/tokenize", {"model": "glimp-tiny", "prompt": "hi"}),
            ("GET", "/tokenizer_info", None),
        ):
            response = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)
            assert response.status_code == 401, (path, headers, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
            assert "Bearer" in error["message"] and KEYS["ci"] not in error["message"]
    assert httpx.get(f"{url}/health", timeout=60).json() == {"status": "ok"}  # open: load balancers probe it


def test_the_openai_client_works_unchanged_with_a_key(keyed: Any) -> None:
    url, traces = keyed
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS["team-a"], max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["glimp-tiny"]
    response = client.chat.completions.create(model="glimp-tiny", messages=QUESTION, max_tokens=4)
    assert response.choices[0].message.content is not None
    stream = client.completions.create(model="glimp-tiny", prompt="count", max_tokens=4, stream=True)
    assert [chunk for chunk in stream]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-nope", max_retries=0).models.list()

    from glimp_ray.tracing import read_spans

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # spans are exported in batches
        requests = [s for s in read_spans(traces) if s["name"] == "glimp.request"] if traces.exists() else []
        if len(requests) >= 2:
            break
        time.sleep(0.5)
    assert requests and {s["attributes"].get("glimp.api_key") for s in requests} == {"team-a"}
    assert not any(KEYS["team-a"] in line for line in traces.read_text().splitlines())

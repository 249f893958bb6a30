"""Flow control through the API-key dependency, on a FastAPI app without Ray: the handlers wait
for the test, so what is in flight is exactly what the test holds, and the buckets run on a
clock the test drives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from deployments import auth, flow
from deployments.auth import sha256_hex
from deployments.config import ServingConfig
from deployments.errors import APIError, install_error_handlers
from deployments.limits import read_body

KEYS = {"tight": "sk-tight", "tokens": "sk-tokens", "free": "sk-free"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Handler:
    """A stand-in for the router's handlers: records the bodies it parsed, holds the requests
    that ask for it until released, refuses those that ask for it with a 400."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def __call__(self, raw: Request) -> dict[str, Any]:
        body = json.loads(await read_body(raw, 1 << 20))
        self.bodies.append(body)
        if body.get("hold"):
            await self.release.wait()
        if body.get("refuse"):
            raise APIError(400, "refused", "invalid_request_error")
        if "generated" in body:  # the handler reports its usage
            raw.state.completion_tokens = body["generated"]
        return {"ok": True}


def make_app(serving: dict[str, Any], clock: Clock) -> tuple[FastAPI, Handler, list[tuple[str, str | None]]]:
    config = ServingConfig.model_validate(serving)
    auth.configure(auth.ApiKeys.of((k.name, k.key_sha256, k.key_env) for k in config.api_keys))
    refused: list[tuple[str, str | None]] = []
    flow.configure(flow.FlowControl(config, lambda: (60, 8), clock, lambda reason, key: refused.append((reason, key))))
    app = FastAPI(dependencies=[Depends(auth.require_api_key)])
    install_error_handlers(app)
    handler = Handler()
    app.post("/v1/chat/completions")(handler)
    app.post("/v1/completions")(handler)
    app.get("/v1/models")(lambda: {"data": []})
    return app, handler, refused


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    auth.configure(auth.ApiKeys())
    flow.configure(None)


def run(app: FastAPI, scenario: Any) -> Any:
    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await scenario(client)

    return asyncio.run(main())


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


async def until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_a_batch_flood_is_shed_while_interactive_requests_are_all_let_in() -> None:
    # 8 slots, batch up to a quarter: batch is let in only while fewer than 2 requests run.
    app, handler, refused = make_app({"router": {"max_ongoing_requests": 8, "batch_share": 0.25}}, Clock())

    async def scenario(client: httpx.AsyncClient) -> Any:
        url = "/v1/chat/completions"
        batch = {"X-Glimp-Priority": "batch"}
        lone = await client.post(url, json=chat(), headers=batch)  # nothing runs: batch is served
        held = [asyncio.create_task(client.post(url, json=chat(hold=True))) for _ in range(2)]
        await until(lambda: len(handler.bodies) == 3)
        flood = await asyncio.gather(
            *(client.post(url, json=chat(), headers=batch) for _ in range(6)),
            *(client.post(url, json=chat(glimp={"priority": "batch"})) for _ in range(6)),
        )
        interactive = await asyncio.gather(*(client.post(url, json=chat()) for _ in range(4)))
        handler.release.set()
        return lone, await asyncio.gather(*held), flood, interactive

    lone, held, flood, interactive = run(app, scenario)
    assert lone.status_code == 200
    assert [r.status_code for r in held + interactive] == [200] * 6
    assert [r.status_code for r in flood] == [429] * 12
    error = flood[0].json()["error"]
    assert error["code"] == "batch_shed" and error["type"] == "server_overloaded"
    assert flood[0].headers["retry-after"] == "5"  # serving.router.retry_after_s
    assert refused == [("priority", None)] * 12
    assert len(handler.bodies) == 1 + 2 + 4  # a shed request never reached its handler


def test_a_batch_request_is_served_when_the_replica_has_room() -> None:
    app, handler, _ = make_app({"router": {"max_ongoing_requests": 8, "batch_share": 0.5}}, Clock())

    async def scenario(client: httpx.AsyncClient) -> Any:
        url = "/v1/completions"
        held = [asyncio.create_task(client.post(url, json={"prompt": "x", "hold": True})) for _ in range(3)]
        await until(lambda: len(handler.bodies) == 3)
        let_in = await client.post(url, json={"prompt": "x", "glimp": {"priority": "batch"}})  # 3 < 4 run
        handler.release.set()
        await asyncio.gather(*held)
        return let_in

    assert run(app, scenario).status_code == 200
    # The handler sees the body as sent; the wire model takes glimp.priority and leaves it out of
    # the loop's parameters.
    assert handler.bodies[-1] == {"prompt": "x", "glimp": {"priority": "batch"}}
    from deployments.protocol import CompletionRequest

    parsed = CompletionRequest.model_validate({"model": "m", **handler.bodies[-1]})
    assert parsed.glimp.priority == "batch" and "priority" not in parsed.overrides()


def test_a_priority_other_than_interactive_or_batch_is_a_400_naming_it() -> None:
    app, _, _ = make_app({}, Clock())

    async def scenario(client: httpx.AsyncClient) -> Any:
        return (
            await client.post("/v1/chat/completions", json=chat(glimp={"priority": "urgent"})),
            await client.post("/v1/chat/completions", json=chat(), headers={"X-Glimp-Priority": "high"}),
            await client.post("/v1/chat/completions", json=chat(), headers={"X-Glimp-Priority": "Interactive"}),
        )

    body, header, fine = run(app, scenario)
    assert body.status_code == 400 and body.json()["error"]["param"] == "glimp.priority"
    assert header.status_code == 400 and header.json()["error"]["param"] == "X-Glimp-Priority"
    assert fine.status_code == 200


def keyed(**rate_limits: Any) -> dict[str, Any]:
    return {
        "api_keys": [
            {"name": "tight", "key_sha256": sha256_hex(KEYS["tight"]), "rate_limits": {"requests_per_minute": 2}},
            {"name": "tokens", "key_sha256": sha256_hex(KEYS["tokens"])},
            {"name": "free", "key_sha256": sha256_hex(KEYS["free"]), "rate_limits": {}},
        ],
        "rate_limits": rate_limits,
    }


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def test_a_key_over_its_request_bucket_gets_429_with_retry_after_and_one_under_it_does_not() -> None:
    clock = Clock()
    app, _, refused = make_app(keyed(tokens_per_minute=1000), clock)

    async def scenario(client: httpx.AsyncClient) -> Any:
        url = "/v1/chat/completions"
        tight = [await client.post(url, json=chat(), headers=bearer("tight")) for _ in range(3)]
        free = [await client.post(url, json=chat(n=8), headers=bearer("free")) for _ in range(20)]
        clock.now += 30  # 2 per minute: room for one more
        later = await client.post(url, json=chat(), headers=bearer("tight"))
        models = [await client.get("/v1/models", headers=bearer("tight")) for _ in range(3)]  # not limited
        return tight, free, later, models

    tight, free, later, models = run(app, scenario)
    assert [r.status_code for r in tight] == [200, 200, 429]
    assert tight[0].headers["x-ratelimit-limit-requests"] == "2"
    assert tight[0].headers["x-ratelimit-remaining-requests"] == "1"
    error = tight[2].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests" and "'tight'" in error["message"]
    assert tight[2].headers["retry-after"] == "30" and tight[2].headers["retry-after-ms"] == "30000"
    assert tight[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert [r.status_code for r in free + [later] + models] == [200] * 24
    assert "x-ratelimit-limit-requests" not in free[0].headers
    assert refused == [("requests", "tight")]


def test_tokens_are_what_a_request_may_generate_and_a_refused_request_gets_them_back() -> None:
    clock = Clock()
    # The default bucket (the key 'tokens' sets none): 300 tokens; the app's defaults: thinking 60, answer 8.
    app, _, _ = make_app(keyed(tokens_per_minute=300), clock)

    async def scenario(client: httpx.AsyncClient) -> Any:
        url = "/v1/completions"
        return [
            await client.post(url, json={"prompt": "x", "max_tokens": 40, "refuse": True}, headers=bearer("tokens")),
            await client.post(url, json={"prompt": ["a", "b"], "n": 2, "max_tokens": 12}, headers=bearer("tokens")),
            await client.post(url, json={"prompt": "x"}, headers=bearer("tokens")),
            await client.post(
                url, json={"prompt": "x", "max_tokens": 2, "glimp": {"thinking_budget": 10}}, headers=bearer("tokens")
            ),
        ]

    refused, four, default, small = run(app, scenario)
    assert refused.status_code == 400  # its 100 tokens were given back
    assert four.status_code == 200 and four.headers["x-ratelimit-remaining-tokens"] == "12"  # 300 - 4 x (60 + 12)
    assert default.status_code == 429  # 60 + 8 > 12
    assert default.json()["error"]["type"] == "tokens" and "requested 68" in default.json()["error"]["message"]
    assert default.headers["retry-after"] == "12"  # 56 tokens short at 5 per second
    assert small.status_code == 200  # 10 + 2 fits


def test_a_request_counts_in_flight_until_its_response_is_sent_also_when_refused() -> None:
    app, handler, _ = make_app({"router": {"max_ongoing_requests": 4, "batch_share": 0.25}}, Clock())
    control = flow.current()
    assert control is not None

    async def scenario(client: httpx.AsyncClient) -> Any:
        await client.post("/v1/chat/completions", json=chat(refuse=True))
        await client.post("/v1/chat/completions", json=chat(), headers={"X-Glimp-Priority": "batch"})
        assert control.in_flight == 0
        return await client.post("/v1/chat/completions", json=chat(), headers={"X-Glimp-Priority": "batch"})

    assert run(app, scenario).status_code == 200


def test_a_handler_that_reports_its_usage_gets_back_what_it_did_not_generate() -> None:
    app, _, _ = make_app(keyed(tokens_per_minute=300), Clock())

    async def scenario(client: httpx.AsyncClient) -> Any:
        url = "/v1/completions"
        used = await client.post(url, json={"prompt": "x", "n": 4, "generated": 50}, headers=bearer("tokens"))
        unreported = await client.post(url, json={"prompt": "x"}, headers=bearer("tokens"))
        return used, unreported, await client.post(url, json={"prompt": "x"}, headers=bearer("tokens"))

    used, unreported, third = run(app, scenario)
    assert used.status_code == 200  # charged 4 x 68 = 272, then 222 given back
    assert unreported.status_code == 200 and unreported.headers["x-ratelimit-remaining-tokens"] == "182"
    assert third.status_code == 200 and third.headers["x-ratelimit-remaining-tokens"] == "114"

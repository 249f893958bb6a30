"""A flood beyond the router's queue bound gets 429 with Retry-After at once; every request
that was let in finishes. Batch traffic is shed while a request runs and interactive is served;
a key past its bucket gets 429 with Retry-After (counts, not timings: a held request keeps the
router busy for as long as the test needs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.auth import sha256_hex
from tests.deployments.conftest import app_args

serve = pytest.importorskip("ray.serve")


def test_a_flood_beyond_the_queue_bound_gets_429_and_the_accepted_finish(
    serve_app: str, tiny_pair: tuple[Path, Path]
) -> None:
    from deployments.app import build_app

    args = app_args(tiny_pair)
    # One request in the router and one waiting: a flood of 16 at once must overflow it.
    args["serving"]["router"] = {
        "num_cpus": 0.1,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "retry_after_s": 3,
    }
    serve.run(build_app(args), name="flood", route_prefix="/flood")
    url = f"{serve_app}/flood/v1/completions"
    try:

        def ask(i: int) -> httpx.Response:
            body = {"model": "glimp-tiny", "prompt": f"flood {i}: count the words", "max_tokens": 8}
            return httpx.post(url, json=body, timeout=120)

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(ask, range(16)))
    finally:
        serve.delete("flood")
    codes = [r.status_code for r in responses]
    shed = [r for r in responses if r.status_code == 429]
    assert shed, codes
    assert all(r.headers.get("retry-after") == "3" for r in shed)
    assert set(codes) == {200, 429}, codes  # nothing let in failed
    assert all(r.json()["choices"][0]["text"] is not None for r in responses if r.status_code == 200)


def test_a_batch_flood_is_shed_while_interactive_requests_succeed_and_keys_keep_to_their_buckets(
    serve_app: str, tiny_pair: tuple[Path, Path]
) -> None:
    from deployments.app import build_app

    keys = {"team": "sk-team-flow", "tight": "sk-tight-flow"}
    args = app_args(tiny_pair)
    # 8 requests at once on the router; batch ones only while none runs (0.125 x 8 = 1).
    args["serving"]["router"] = {"num_cpus": 0.1, "max_ongoing_requests": 8, "batch_share": 0.125}
    args["serving"]["api_keys"] = [
        {"name": "team", "key_sha256": sha256_hex(keys["team"])},
        {"name": "tight", "key_sha256": sha256_hex(keys["tight"]), "rate_limits": {"requests_per_minute": 2}},
    ]
    serve.run(build_app(args), name="priority", route_prefix="/priority")
    url = f"{serve_app}/priority/v1/completions"
    team = {"Authorization": f"Bearer {keys['team']}"}
    batch = {**team, "X-Glimp-Priority": "batch"}
    release = threading.Event()

    def held_body() -> Iterator[bytes]:  # in flight on the router until the test lets it finish
        yield b'{"model": "glimp-tiny", "prompt": "held open", "max_tokens": 4'
        release.wait(120)
        yield b"}"

    def ask(i: int, headers: dict[str, str], body: dict[str, Any] | None = None) -> httpx.Response:
        body = body or {"model": "glimp-tiny", "prompt": f"request {i}: count the words", "max_tokens": 4}
        return httpx.post(url, json=body, headers=headers, timeout=120)

    try:
        alone = ask(0, batch)  # nothing else runs: batch is served
        with ThreadPoolExecutor(16) as pool:
            held = pool.submit(httpx.post, url, content=held_body(), headers=team, timeout=120)
            deadline = time.monotonic() + 60
            while ask(0, batch).status_code != 429:  # until the held request counts in flight
                assert time.monotonic() < deadline, "the held request never reached the router"
            marked = {"model": "glimp-tiny", "prompt": "x", "max_tokens": 4, "glimp": {"priority": "batch"}}
            flood = [pool.submit(ask, i, batch) for i in range(6)] + [
                pool.submit(ask, i, team, marked) for i in range(2)
            ]
            interactive = [pool.submit(ask, i, team) for i in range(4)]
            flood_codes = [f.result().status_code for f in flood]
            interactive_codes = [f.result().status_code for f in interactive]
            release.set()
            held_code = held.result().status_code
        tight = [ask(i, {"Authorization": f"Bearer {keys['tight']}"}) for i in range(3)]
    finally:
        release.set()
        serve.delete("priority")
    assert alone.status_code == 200
    assert flood_codes == [429] * 8
    assert interactive_codes == [200] * 4 and held_code == 200
    assert [r.status_code for r in tight] == [200, 200, 429]  # 2 per minute
    assert tight[0].headers["x-ratelimit-limit-requests"] == "2"
    assert int(tight[2].headers["retry-after"]) > 1 and tight[2].json()["error"]["code"] == "rate_limit_exceeded"

"""A flood beyond the router's queue bound gets 429 with Retry-After at once; every request
that was let in finishes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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

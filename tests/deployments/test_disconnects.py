"""Clients that hang up mid-request leave nothing behind in the pools."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

MODEL = "glimp-tiny"
APP = "glimp"
REPLICAS = 2  # per pool, in the session app


def replica_stats() -> dict[str, dict[str, int]]:
    """Counters of every replica of both pools, keyed ``pool/replica``. The router reaches a
    replica through the session-affine pool handle, so random session ids are sent until every
    replica answered."""
    handle = serve.get_app_handle(APP)
    stats: dict[str, dict[str, int]] = {}
    for pool in ("small", "large"):
        seen: dict[str, dict[str, int]] = {}
        for _ in range(200):
            counters = handle.pool_stats.remote(pool).result()
            seen[counters["replica"]] = counters
            if len(seen) == REPLICAS:
                break
        assert len(seen) == REPLICAS, f"reached {len(seen)} of the {pool} pool's replicas"
        stats.update({f"{pool}/{replica}": counters for replica, counters in seen.items()})
    return stats


def session_counts() -> dict[str, int]:
    """Cached sessions on every replica of both pools, keyed ``pool/replica``."""
    return {key: counters["sessions"] for key, counters in replica_stats().items()}


async def hang_up(client: httpx.AsyncClient, base: str, i: int) -> str:
    """One request dropped at a different point: after the first chunk, after some steps, or
    (non-streaming) while the server is still thinking."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"disconnect {i} {uuid.uuid4().hex[:8]}"}],
        "glimp": {"thinking_budget": 2000, "step_max_tokens": 4, "policy": ("entropy", "small", "large")[i % 3]},
    }
    if i % 4 == 3:
        try:
            await client.post(f"{base}/v1/chat/completions", json=body, timeout=0.3)
        except httpx.TimeoutException:
            return "timed out"
        return "finished"
    lines_before_hanging_up = 1 + i % 4 * 2
    async with client.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= lines_before_hanging_up:
                    return "hung up"
    return "finished"


def test_a_hundred_disconnects_leave_no_session_behind(serve_app: str) -> None:
    before = session_counts()

    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as client:
            gate = asyncio.Semaphore(10)

            async def one(i: int) -> str:
                async with gate:
                    return await hang_up(client, serve_app, i)

            return await asyncio.gather(*(one(i) for i in range(100)))

    outcomes = asyncio.run(run())
    assert outcomes.count("hung up") >= 70, outcomes  # the thinking budget outlasts every hang-up
    deadline = time.monotonic() + 30
    while True:
        after = session_counts()
        if all(after.get(key, 0) <= n for key, n in before.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(after.get(key, 0) <= n for key, n in before.items()), (before, after)
    # The server still answers.
    ok = httpx.post(
        f"{serve_app}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "still there?"}]},
        timeout=60,
    )
    assert ok.status_code == 200

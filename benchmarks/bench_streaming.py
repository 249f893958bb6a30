"""Streaming glimpse through HTTP: pool calls per request and end-to-end over model time.

Serves the demo pair three ways side by side — GlimpRouter with streaming glimpse (one small-pool
call per run of easy steps), GlimpRouter with one call per step, and large-only — and sends each
test problem to the three in turn, one request at a time (T 0.6, a seed per problem), so drift in
the machine's speed falls on all three alike. Prints accuracy, mean latency, mean
end-to-end latency over the time spent in the models (from each response's trace), and pool calls
per request (the replicas' own counters); then requests/s and tokens/s of the streamed
GlimpRouter with 1 and 16 concurrent clients.

    python benchmarks/bench_streaming.py [--requests 24]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import httpx
from demo_app import DEMO_TAU, MODEL, demo_app_args

from glimp_ray.demo.task import make_split, verify

VARIANTS = {  # name: (app, routing)
    "GlimpRouter, streamed": ("streamed", {"policy": "entropy", "threshold": DEMO_TAU, "streaming_glimpse": True}),
    "GlimpRouter, per step": ("perstep", {"policy": "entropy", "threshold": DEMO_TAU, "streaming_glimpse": False}),
    "large-only": ("large", {"policy": "large"}),
}


def model_s(call: dict[str, Any]) -> float:
    return call["prefill_s"] + call["decode_s"] + call.get("glimpse_model_s", 0.0)


def pool_calls(app: str) -> int:
    from ray import serve

    return sum(
        int(serve.get_deployment_handle(pool, app_name=app).counters.remote().result()["calls"])
        for pool in ("SmallPool", "LargePool")
    )


async def one(client: httpx.AsyncClient, url: str, problem: Any, seed: int) -> dict[str, Any]:
    body = {"model": MODEL, "messages": problem.messages(), "seed": seed, "glimp": {"return_trace": True}}
    t0 = time.perf_counter()
    r = await client.post(f"{url}/v1/chat/completions", json=body)
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text}")
    latency = time.perf_counter() - t0
    reply = r.json()
    trace = reply["glimp"]
    return {
        "latency": latency,
        "model_s": sum(model_s(s) for s in trace["steps"]) + model_s(trace["answer"]),
        "correct": verify(reply["choices"][0]["message"]["content"], problem.answer),
    }


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until the proxy routes to the app (its route table is updated after ``serve.run`` returns)."""
    until = time.monotonic() + timeout_s
    while httpx.get(f"{url}/v1/models", timeout=30).status_code != 200:
        if time.monotonic() > until:
            raise TimeoutError(f"{url} is not serving after {timeout_s:g} s")
        time.sleep(0.5)


async def side_by_side(urls: dict[str, str], problems: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Each problem to every variant, the variants' order rotating from one problem to the next."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    names = list(urls)
    async with httpx.AsyncClient(timeout=600) as client:
        for i, problem in enumerate(problems):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                rows[name].append(await one(client, urls[name], problem, i))
    return rows


async def throughput(url: str, problems: list[Any], clients: int, seconds: float = 20.0) -> tuple[float, float]:
    done = tokens = 0
    until = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, offset: int) -> None:
        nonlocal done, tokens
        n = offset
        while time.perf_counter() < until:
            body = {"model": MODEL, "messages": problems[n % len(problems)].messages()}
            r = await http.post(f"{url}/v1/chat/completions", json=body)
            r.raise_for_status()
            done += 1
            tokens += r.json()["usage"]["completion_tokens"]
            n += 7

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http, i * 11) for i in range(clients)))
    elapsed = time.perf_counter() - start
    return done / elapsed, tokens / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--port", type=int, default=8126)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from deployments import serve_env
    from deployments.app import build_app

    problems = make_split("test", 300)
    chosen = problems[: args.requests]
    results: dict[str, tuple[list[dict[str, Any]], float]] = {}
    rates: dict[int, tuple[float, float]] = {}
    serve_env.apply()  # Serve's throughput-optimized mode for the cluster, as the project serves
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        base = f"http://127.0.0.1:{args.port}"
        urls = {}
        for name, (app, routing) in VARIANTS.items():
            serve.run(build_app(demo_app_args(routing)), name=app, route_prefix=f"/{app}")
            urls[name] = f"{base}/{app}"
        for url in urls.values():
            wait_ready(url)
        asyncio.run(side_by_side(urls, problems[-4:]))  # warm-up
        before = {name: pool_calls(app) for name, (app, _) in VARIANTS.items()}
        rows = asyncio.run(side_by_side(urls, chosen))
        for name, (app, _) in VARIANTS.items():
            results[name] = (rows[name], (pool_calls(app) - before[name]) / len(chosen))
        for clients in (1, 16):
            rates[clients] = asyncio.run(throughput(urls["GlimpRouter, streamed"], problems, clients))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"demo pair through HTTP; {len(chosen)} test problems one at a time, T 0.6, a seed per problem")
    print("| variant | accuracy | mean latency (s) | end-to-end / model time | pool calls / request |")
    print("|---|---|---|---|---|")
    for name, (rows, calls) in results.items():
        accuracy = sum(r["correct"] for r in rows) / len(rows)
        latency = statistics.mean(r["latency"] for r in rows)
        overhead = sum(r["latency"] for r in rows) / sum(r["model_s"] for r in rows)
        print(f"| {name} | {accuracy:.1%} | {latency:.3f} | {overhead:.2f} | {calls:.1f} |")
    large = statistics.mean(r["latency"] for r in results["large-only"][0])
    streamed = statistics.mean(r["latency"] for r in results["GlimpRouter, streamed"][0])
    print(f"streamed GlimpRouter latency vs large-only: {streamed / large - 1:+.1%}")
    (rps1, tps1), (rps16, tps16) = rates[1], rates[16]
    print(
        f"streamed GlimpRouter: 1 client {rps1:.2f} req/s {tps1:.0f} tok/s; 16 clients {rps16:.2f} req/s "
        f"{tps16:.0f} tok/s ({tps16 / tps1:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

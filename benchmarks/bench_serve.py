"""Serving benchmark: HTTP through Ray Serve against the in-process loop, and throughput.

Starts a local Ray cluster and the app (demo models by default), then reports
(1) mean end-to-end latency of the same prompts through HTTP and through the core's
in-process loop (same models, same greedy settings), and their ratio;
(2) for both loops through HTTP (streaming glimpse, the default; one pool call per step), pool
calls per request (the replicas' own counters) and end-to-end latency over the time spent in
the models (from each response's trace), the loops taking the prompts in turn;
(3) requests/s and completion tokens/s with 1, 4 and 16 concurrent clients (streaming glimpse).

    python benchmarks/bench_serve.py [--requests 24] [--concurrency 1,4,16] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
from bench_streaming import model_s, pool_calls, wait_ready

from glimp_ray.demo.task import make_split

# name: (app, streaming_glimpse)
LOOPS = {"streaming glimpse": ("bench", True), "one call per step": ("perstep", False)}


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [p.messages() for p in make_split("test", n)]


def app_args(tiny: bool) -> dict[str, Any]:
    args: dict[str, Any] = {
        "routing": {},
        "sampling": {"temperature": 0.0},
        "serving": {
            "model_name": "glimp-bench",
            "small": {"num_cpus": 0.1},
            "large": {"num_cpus": 0.1},
            "router": {"num_cpus": 0.1},
        },
    }
    if tiny:
        from glimp_ray.tiny import build_tiny_pair

        small, large = build_tiny_pair(tempfile.mkdtemp(prefix="glimp-bench-"))
        args.update(small={"model": str(small)}, large={"model": str(large)})
        args["limits"] = {
            "delimiter": " ",
            "step_max_tokens": 16,
            "thinking_budget": 96,
            "answer_max_tokens": 16,
        }
        args["routing"]["threshold"] = 3.2
    return args


async def http_latencies(base: str, messages: list[list[dict[str, str]]]) -> tuple[list[float], list[str]]:
    latencies, answers = [], []
    async with httpx.AsyncClient(timeout=300) as client:
        for m in messages:
            start = time.perf_counter()
            r = await client.post(f"{base}/v1/chat/completions", json={"model": "glimp-bench", "messages": m})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            answers.append(r.json()["choices"][0]["message"]["content"])
    return latencies, answers


async def loop_costs(urls: dict[str, str], messages: list[list[dict[str, str]]]) -> dict[str, tuple[float, float]]:
    """Each prompt to every loop in turn (the order rotating); per loop, the sum of end-to-end
    latencies and the sum of model seconds from the responses' traces."""
    sums = {name: [0.0, 0.0] for name in urls}
    names = list(urls)
    async with httpx.AsyncClient(timeout=300) as client:
        for i, m in enumerate(messages):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                body = {"model": "glimp-bench", "messages": m, "glimp": {"return_trace": True}}
                start = time.perf_counter()
                r = await client.post(f"{urls[name]}/v1/chat/completions", json=body)
                r.raise_for_status()
                sums[name][0] += time.perf_counter() - start
                trace = r.json()["glimp"]
                sums[name][1] += sum(model_s(s) for s in trace["steps"]) + model_s(trace["answer"])
    return {name: (e2e, model) for name, (e2e, model) in sums.items()}


async def throughput(base: str, messages: list[list[dict[str, str]]], concurrency: int) -> tuple[float, float]:
    queue = list(messages)
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            m = queue.pop()
            r = await client.post(f"{base}/v1/chat/completions", json={"model": "glimp-bench", "messages": m})
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return len(messages) / elapsed, tokens / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="prompts per measurement")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of the demo pair")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from deployments import serve_env
    from deployments.app import build_app
    from deployments.config import AppConfig
    from glimp_ray.local import close_collaborator, load_collaborator

    config_args = app_args(args.tiny)
    messages = prompts(args.requests)
    collab = load_collaborator(AppConfig.model_validate(config_args))
    asyncio.run(collab.run(messages[0]))  # warm-up
    local, local_answers = [], []
    for m in messages:
        result = asyncio.run(collab.run(m))
        local.append(result.latency_s)
        local_answers.append(result.answer)
    close_collaborator(collab)

    serve_env.apply()  # Serve's throughput-optimized mode for the cluster, as the project serves
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        base = f"http://127.0.0.1:{args.port}"
        urls = {}
        for name, (app, streaming) in LOOPS.items():
            loop_args = {**config_args, "routing": {**config_args["routing"], "streaming_glimpse": streaming}}
            serve.run(build_app(loop_args), name=app, route_prefix=f"/{app}")
            urls[name] = f"{base}/{app}"
        for url in urls.values():
            wait_ready(url)
        streamed = urls["streaming glimpse"]  # the default loop: what [1] and [3] measure
        asyncio.run(http_latencies(streamed, messages[:2]))  # warm-up
        remote, remote_answers = asyncio.run(http_latencies(streamed, messages))
        print(f"models: {'tiny random pair' if args.tiny else 'demo pair'}; {len(messages)} prompts, greedy")
        print("\n[1] end-to-end latency, sequential requests")
        print(
            f"    in-process loop: mean {statistics.mean(local) * 1000:.1f} ms, "
            f"median {statistics.median(local) * 1000:.1f} ms"
        )
        print(
            f"    HTTP via Serve:  mean {statistics.mean(remote) * 1000:.1f} ms, "
            f"median {statistics.median(remote) * 1000:.1f} ms"
        )
        same = sum(a == b for a, b in zip(local_answers, remote_answers, strict=True))
        print(
            f"    HTTP / in-process (mean) = {statistics.mean(remote) / statistics.mean(local):.3f}; "
            f"same answers: {same}/{len(messages)}"
        )
        print("\n[2] the two loops through HTTP, sequential requests")
        asyncio.run(loop_costs(urls, messages[:2]))  # warm-up
        before = {name: pool_calls(app) for name, (app, _) in LOOPS.items()}
        costs = asyncio.run(loop_costs(urls, messages))
        for name, (app, _) in LOOPS.items():
            calls = (pool_calls(app) - before[name]) / len(messages)
            e2e, model = costs[name]
            print(
                f"    {name:<18} {calls:5.1f} pool calls / request, end-to-end / model time {e2e / model:.2f} "
                f"(mean {e2e / len(messages) * 1000:.1f} ms)"
            )
        print("\n[3] throughput through HTTP (streaming glimpse)")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            rps, tps = asyncio.run(throughput(streamed, messages, concurrency))
            print(f"    {concurrency:3d} concurrent clients: {rps:6.2f} requests/s, {tps:8.1f} completion tokens/s")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

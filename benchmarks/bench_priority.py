"""Priority under a batch flood: interactive latency alone, then beside a flood of batch requests.

Serves the demo pair through Ray Serve, then runs closed-loop interactive clients in phases,
alternately alone and beside a flood of batch-priority clients (``X-Glimp-Priority: batch``), which
retry a shed request after a short pause instead of its Retry-After, to keep the pressure on.
The router lets batch in only while fewer than ``batch_share x max_ongoing_requests`` requests
run on it (docs/flow-control.md). Prints interactive p50/p95 of both phases and their ratio
(the target: p95 rises at most 25%), and how many batch requests were shed and served.

    python benchmarks/bench_priority.py [--interactive 2] [--batch 8] [--phase-s 12] [--rounds 2] \
        [--pause-s 1] [--max-ongoing 4] [--batch-share 0.25]

The defaults let batch in only on an idle router (4 x 0.25 = 1: while no other request runs):
two interactive clients already keep the demo pair's two CPU cores busy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx
from demo_app import MODEL, demo_app_args

from glimp_ray.demo.task import make_split
from glimp_ray.eval.metrics import percentile


async def interactive(base: str, clients: int, seconds: float, counted_from: float = 0.0) -> list[float]:
    """Closed-loop interactive clients; the latency of every request sent ``counted_from`` seconds
    in or later (all must succeed)."""
    problems = make_split("test", 200)
    latencies: list[float] = []
    first = time.perf_counter() + counted_from
    until = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, offset: int) -> None:
        n = offset
        while time.perf_counter() < until:
            body = {"model": MODEL, "messages": problems[n % len(problems)].messages()}
            start = time.perf_counter()
            response = await http.post(f"{base}/v1/chat/completions", json=body)
            response.raise_for_status()
            if start >= first:
                latencies.append(time.perf_counter() - start)
            n += 37

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http, i * 11) for i in range(clients)))
    return latencies


async def flood(base: str, clients: int, stop: asyncio.Event, pause_s: float) -> dict[str, int]:
    """Batch-priority clients until ``stop``; counts of served and shed requests."""
    problems = make_split("test", 200)
    counts = {"served": 0, "shed": 0}

    async def client(http: httpx.AsyncClient, offset: int) -> None:
        n = offset
        while not stop.is_set():
            body = {"model": MODEL, "messages": problems[n % len(problems)].messages()}
            response = await http.post(f"{base}/v1/chat/completions", json=body, headers={"X-Glimp-Priority": "batch"})
            if response.status_code == 429:
                counts["shed"] += 1
                await asyncio.sleep(pause_s)
                continue
            response.raise_for_status()
            counts["served"] += 1
            n += 53

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http, i * 7) for i in range(clients)))
    return counts


async def beside_flood(base: str, args: argparse.Namespace) -> tuple[list[float], dict[str, int]]:
    """The flood arrives while interactive clients run (a batch request let in on an idle router
    runs to its end: it is not preempted), and the requests sent after it are measured."""
    stop = asyncio.Event()
    lead_s = 1.0
    measuring = asyncio.create_task(interactive(base, args.interactive, lead_s + args.phase_s, counted_from=lead_s))
    await asyncio.sleep(lead_s / 2)
    flooding = asyncio.create_task(flood(base, args.batch, stop, args.pause_s))
    latencies = await measuring
    stop.set()
    return latencies, await flooding


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactive", type=int, default=2, help="closed-loop interactive clients")
    parser.add_argument("--batch", type=int, default=8, help="batch-priority clients in the flood")
    parser.add_argument("--phase-s", type=float, default=12.0, help="seconds of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of a phase alone and one beside the flood")
    parser.add_argument("--pause-s", type=float, default=1.0, help="a shed batch client's pause before retrying")
    parser.add_argument("--max-ongoing", type=int, default=4, help="serving.router.max_ongoing_requests")
    parser.add_argument("--batch-share", type=float, default=0.25, help="serving.router.batch_share")
    parser.add_argument("--port", type=int, default=8127)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from deployments import serve_env
    from deployments.app import build_app

    app_args = demo_app_args()
    app_args["serving"]["router"] = {
        "num_cpus": 0.1,
        "max_ongoing_requests": args.max_ongoing,
        "batch_share": args.batch_share,
    }
    serve_env.apply()  # Serve's throughput-optimized mode for the cluster, as the project serves
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(app_args), name="bench", route_prefix="/")
        base = f"http://127.0.0.1:{args.port}"
        asyncio.run(interactive(base, args.interactive, 5.0))  # warm-up
        alone: list[float] = []
        beside: list[float] = []
        counts = {"served": 0, "shed": 0}
        for _ in range(args.rounds):  # alternated, so the machine's other load weighs on both alike
            alone += asyncio.run(interactive(base, args.interactive, args.phase_s))
            latencies, flooded = asyncio.run(beside_flood(base, args))
            beside += latencies
            counts = {k: counts[k] + flooded[k] for k in counts}
    finally:
        serve.shutdown()
        ray.shutdown()
    limit = args.batch_share * args.max_ongoing
    print(
        f"demo pair, 1 replica per pool; {args.interactive} interactive clients, a flood of {args.batch} batch "
        f"clients (retry after {args.pause_s} s); batch let in while < {limit:g} requests run on the router "
        f"(max_ongoing_requests {args.max_ongoing} x batch_share {args.batch_share}); {args.rounds} rounds of "
        f"{args.phase_s:g} s alone and {args.phase_s:g} s beside the flood"
    )
    print("| interactive | requests | p50 (s) | p95 (s) |")
    print("|---|---|---|---|")
    for name, latencies in (("alone", alone), ("beside the batch flood", beside)):
        print(f"| {name} | {len(latencies)} | {percentile(latencies, 50):.3f} | {percentile(latencies, 95):.3f} |")
    ratio = percentile(beside, 95) / percentile(alone, 95)
    print(f"interactive p95 beside the flood / alone: {ratio:.3f} ({ratio - 1:+.1%}; target at most +25%)")
    print(f"batch requests: {counts['shed']} shed with 429, {counts['served']} served")
    return 0


if __name__ == "__main__":
    sys.exit(main())

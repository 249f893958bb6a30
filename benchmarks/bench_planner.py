"""The capacity planner against a measured run on the local cluster.

1. Serves the demo pair (HTTP through Ray Serve, spans to JSON lines) and sends open-loop
   Poisson traffic at a few rates (``--trace-rps``), so the trace holds calls at several
   concurrencies: the planner fits each pool's batching curve from it.
2. Plans replicas for ``--rps`` from that trace (``glimp_ray.planner.plan``) and has the
   simulator (``glimp_ray.sim``) predict the p95 at those counts too.
3. Redeploys with the planned replica counts, sends Poisson traffic at ``--rps`` and measures
   p95 latency (client side) and each pool's concurrency per replica (model-seconds of its calls
   over the run's duration and its replicas) from the run's own trace.
4. Prints predicted (analytic model and simulator) against measured, and the error of each.

Replica counts themselves are not measured: finding the fewest that meet an objective takes a
run per count, and on a small machine the replicas share its cores (docs/planning.md).

    python benchmarks/bench_planner.py [--rps 3] [--requests 80] [--trace-rps 0.5,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from demo_app import MODEL, demo_app_args

from glimp_ray.demo.task import make_split
from glimp_ray.eval.metrics import percentile
from glimp_ray.plan_sim import simulator
from glimp_ray.planner import format_plan, plan, requests_from_spans


async def poisson(base: str, messages: list[list[dict[str, str]]], rps: float, seed: int) -> list[float]:
    """Open loop: requests start at exponential gaps whatever the server does; their latencies."""
    rng = random.Random(seed)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, m: list[dict[str, str]]) -> None:
        start = time.perf_counter()
        r = await client.post(f"{base}/v1/chat/completions", json={"model": MODEL, "messages": m, "seed": seed})
        r.raise_for_status()
        latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=600) as client:
        tasks = []
        for m in messages:
            tasks.append(asyncio.create_task(one(client, m)))
            await asyncio.sleep(rng.expovariate(rps))
        await asyncio.gather(*tasks)
    return latencies


FLUSH_S = 7.0  # the router's batch span processor exports every 5 s


def read_spans(path: Path) -> list[dict[str, Any]]:
    time.sleep(FLUSH_S)  # the exporter writes from the router's process: wait for the last batch
    if not path.exists():
        raise RuntimeError(f"no spans at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measured_concurrency(spans: list[dict[str, Any]], replicas: dict[str, int]) -> dict[str, float]:
    """Each pool's calls per replica over the run: its calls' model-seconds / (duration x replicas)."""
    requests = requests_from_spans(spans)
    start = min(r.start_s for r in requests if r.start_s is not None)
    end = max(r.end_s for r in requests if r.end_s is not None)
    seconds = dict.fromkeys(replicas, 0.0)
    for r in requests:
        for call in r.calls:
            seconds[call.route] += call.model_s
            if call.glimpse_model_s > 0:
                seconds["small"] += call.glimpse_model_s
    return {pool: seconds[pool] / ((end - start) * replicas[pool]) for pool in replicas}


def deploy(spans: Path, small: int, large: int, port: int) -> str:
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(demo_app_args(small=small, large=large, spans=spans)), name="bench", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    asyncio.run(poisson(base, [make_split("validation", 1)[0].messages()] * 2, 10.0, 0))  # warm-up
    time.sleep(FLUSH_S)
    spans.unlink(missing_ok=True)  # the warm-up's spans
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=float, default=3.0, help="the load to plan for and then run")
    parser.add_argument("--requests", type=int, default=80, help="requests in the measured run")
    parser.add_argument("--trace-rps", default="0.5,2,4", help="rates of the tracing run (40 requests each)")
    parser.add_argument("--slack", type=float, default=2.0, help="per-token latency target over a lone call's")
    parser.add_argument("--max-concurrency", type=int, default=32, help="the engines' max_running")
    parser.add_argument("--port", type=int, default=8124)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from deployments import serve_env

    work = Path(tempfile.mkdtemp(prefix="glimp-bench-planner-"))
    problems = [p.messages() for p in make_split("test", 300)]
    serve_env.apply()  # Serve's throughput-optimized mode for the cluster, as the project serves
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        traced = work / "trace.jsonl"
        base = deploy(traced, 1, 1, args.port)
        offset = 0
        for i, rate in enumerate(float(r) for r in args.trace_rps.split(",")):
            asyncio.run(poisson(base, problems[offset : offset + 40], rate, seed=i))
            offset += 40
        report = plan(
            requests_from_spans(read_spans(traced)),
            args.rps,
            latency_slack=args.slack,
            max_concurrency=args.max_concurrency,
            confirmer=simulator(),
        )
        predicted = report["plans"][0]
        print(format_plan(report))
        replicas = {"small": predicted["small_replicas"], "large": predicted["large_replicas"]}
        serve.delete("bench")
        measured_spans = work / "measured.jsonl"
        base = deploy(measured_spans, replicas["small"], replicas["large"], args.port)
        latencies = asyncio.run(poisson(base, problems[offset : offset + args.requests], args.rps, seed=99))
        spans = read_spans(measured_spans)
        concurrency = measured_concurrency(spans, replicas)
        router_latencies = [r.latency_s for r in requests_from_spans(spans)]
    finally:
        serve.shutdown()
        ray.shutdown()
    measured_p95 = percentile(router_latencies, 95)
    rows = [
        ("p95 latency at the router (s), model", predicted["predicted_p95_s"], measured_p95),
        ("p95 latency at the router (s), simulator", predicted["simulated_p95_s"], measured_p95),
        ("small calls per replica", predicted["small_concurrency"], concurrency["small"]),
        ("large calls per replica", predicted["large_concurrency"], concurrency["large"]),
    ]
    print(
        f"\nplanned for {args.rps:g} requests/s: {replicas['small']} small, {replicas['large']} large replicas; "
        f"measured over {len(latencies)} requests"
    )
    print("| quantity | predicted | measured | error |\n|---|---|---|---|")
    for name, want, got in rows:
        print(f"| {name} | {want:.3f} | {got:.3f} | {(want - got) / got:+.1%} |")
    print(f"p95 latency at the client (HTTP included): {percentile(latencies, 95):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

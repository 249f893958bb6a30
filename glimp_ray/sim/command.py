"""``glimp-ray simulate``: traced requests on pools built from profiles, at a load, for a while.

    glimp-ray simulate --traces spans.jsonl --small-profile S.json --large-profile L.json \\
        --rps 20 --duration 3600 [--threshold 0.5] [--replicas small=2,large=4] [--autoscale] \\
        [--max-replicas small=8,large=16] [--gpus small=1,large=2] [--price small=0.8,large=4] \\
        [--out DIR]

Prints the percentiles, GPU-hours and cost; with ``--out`` writes ``sim.json`` and ``sim.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

POOLS = ("small", "large")


def per_pool(text: str | None, kind: type, flag: str) -> dict[str, Any]:
    """``small=2,large=4`` -> {"small": 2, "large": 4}."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        pool, sep, value = item.partition("=")
        if not sep or pool.strip() not in POOLS:
            raise ValueError(f"{flag} takes pool=value pairs for small and large, e.g. small=2,large=4; got {text!r}")
        try:
            out[pool.strip()] = kind(value)
        except ValueError:
            raise ValueError(f"{flag}: {value!r} is not a number") from None
    return out


def run(args: argparse.Namespace) -> int:
    from glimp_ray.autoscaling import PoolScaling
    from glimp_ray.plan_model import router_overhead_s
    from glimp_ray.profile import EngineProfile
    from glimp_ray.sim import PoolSpec, SimConfig, simulate
    from glimp_ray.traces import requests_from_spans

    if not Path(args.traces).is_file():
        raise ValueError(f"trace file not found: {args.traces}")
    with open(args.traces) as f:
        requests = requests_from_spans([json.loads(line) for line in f if line.strip()])
    profiles = {"small": EngineProfile.load(args.small_profile), "large": EngineProfile.load(args.large_profile)}
    replicas = per_pool(args.replicas, int, "--replicas")
    highest = per_pool(args.max_replicas, int, "--max-replicas")
    gpus = per_pool(args.gpus, float, "--gpus")
    prices = per_pool(args.price, float, "--price")
    pools = {}
    for pool in POOLS:
        start = replicas.get(pool, 1)
        scaling = None
        if args.autoscale:
            scaling = PoolScaling(min_replicas=1, max_replicas=highest.get(pool, max(8, start)), profile=profiles[pool])
        pools[pool] = PoolSpec(
            profiles[pool],
            start,
            autoscaling=scaling,
            startup_s=args.startup_s,
            gpus_per_replica=gpus.get(pool, 1.0),
            price_per_gpu_hour=prices.get(pool, 0.0),
        )
    overhead = args.router_overhead_s if args.router_overhead_s is not None else router_overhead_s(requests)
    config = SimConfig(
        requests=requests,
        pools=pools,
        arrivals=args.rps,
        duration_s=args.duration,
        threshold=args.threshold,
        router_overhead_s=overhead,
        warmup_s=args.warmup if args.warmup is not None else min(0.1 * args.duration, 300.0),
        seed=args.seed,
    )
    result = simulate(config, progress=not args.quiet)
    print(
        f"simulated {args.duration:g} s at {args.rps:g} requests/s ({result.arrived} requests, "
        f"{result.unfinished} unfinished): p50 {result.p50_s:.3f} s, p95 {result.p95_s:.3f} s, "
        f"p99 {result.p99_s:.3f} s"
    )
    for pool in POOLS:
        print(
            f"  {pool}: mean {result.mean_replicas(pool):.2f} replicas, {result.gpu_hours[pool]:.2f} GPU-h, "
            f"cost {result.cost[pool]:.2f}"
        )
    if args.out:
        json_path, png_path = result.save(args.out)
        print(f"wrote {json_path} and {png_path}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--traces", required=True, help="JSONL spans (serving.tracing) whose requests are replayed")
    parser.add_argument("--small-profile", required=True, help="the small pool's engine profile (JSON)")
    parser.add_argument("--large-profile", required=True, help="the large pool's engine profile (JSON)")
    parser.add_argument("--rps", type=float, required=True, help="Poisson arrival rate (requests/s)")
    parser.add_argument("--duration", type=float, required=True, help="simulated seconds of arrivals")
    parser.add_argument("--threshold", type=float, help="a what-if τ (default: the traced routes)")
    parser.add_argument("--replicas", help="starting replicas, e.g. small=2,large=4 (default 1 each)")
    parser.add_argument("--autoscale", action="store_true", help="size the pools with the autoscaling policy")
    parser.add_argument("--max-replicas", help="with --autoscale, e.g. small=8,large=16 (default 8)")
    parser.add_argument("--gpus", help="GPUs per replica, e.g. small=1,large=2 (default 1)")
    parser.add_argument("--price", help="price per GPU-hour, e.g. small=0.8,large=4 (default 0)")
    parser.add_argument("--startup-s", type=float, default=0.0, help="seconds a new replica takes to serve")
    parser.add_argument("--router-overhead-s", type=float, help="per request (default: the traces' median)")
    parser.add_argument("--warmup", type=float, help="seconds left out of the percentiles (default 10%%, <= 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--out", help="write sim.json and sim.png into this directory")

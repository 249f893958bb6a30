"""How fast the simulator runs: an hour at 20 requests/s, both pools autoscaled, prints wall seconds.

    python benchmarks/bench_simulator.py [--traces spans.jsonl] [--rps 20] [--duration 3600]

Without ``--traces`` it replays made-up requests shaped like the demo's (7 steps of ~8 tokens,
about one in five routed large by entropy, a 10-token answer); pools are the committed CPU
profiles of the demo pair. Target: under 60 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from glimp_ray.autoscaling import PoolScaling
from glimp_ray.profile import EngineProfile
from glimp_ray.sim import PoolSpec, SimConfig, simulate
from glimp_ray.traces import TracedCall, TracedRequest, requests_from_spans

ROOT = Path(__file__).resolve().parents[1]


def made_up_requests(n: int = 200, seed: int = 0) -> list[TracedRequest]:
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        steps = []
        for _ in range(rng.randint(4, 10)):
            entropy = rng.expovariate(1 / 0.12)
            steps.append(TracedCall("large" if entropy > 0.16 else "small", entropy, rng.randint(3, 14), 0.0))
        requests.append(TracedRequest(f"r{i}", tuple(steps), TracedCall("large", None, 10, 0.0), 0.0))
    return requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", help="JSONL spans to replay (default: made-up demo-shaped requests)")
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if args.traces:
        with open(args.traces) as f:
            requests = requests_from_spans([json.loads(line) for line in f if line.strip()])
    else:
        requests = made_up_requests()
    pools = {}
    for pool, highest in (("small", 16), ("large", 32)):
        profile = EngineProfile.load(ROOT / f"configs/profiles/demo-{pool}-hf-cpu.json")
        scaling = PoolScaling(min_replicas=1, max_replicas=highest, profile=profile)
        pools[pool] = PoolSpec(profile, 1, autoscaling=scaling, startup_s=30.0, gpus_per_replica=1.0)
    config = SimConfig(requests, pools, args.rps, args.duration, warmup_s=min(300.0, args.duration / 10))
    start = time.perf_counter()
    result = simulate(config, progress=True)
    wall = time.perf_counter() - start
    print(
        f"{args.duration:g} s at {args.rps:g} requests/s ({result.arrived} requests): p50 {result.p50_s:.3f} s, "
        f"p95 {result.p95_s:.3f} s; mean replicas small {result.mean_replicas('small'):.1f}, "
        f"large {result.mean_replicas('large'):.1f}"
    )
    print(f"wall: {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

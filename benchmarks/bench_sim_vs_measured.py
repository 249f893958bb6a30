"""The simulator against real runs: the demo pair on the labelled local cluster, one replica per pool.

    python benchmarks/bench_sim_vs_measured.py [--rates 0.5,1.5,3,4.5] [--seconds 60] [--out DIR]
    python benchmarks/bench_sim_vs_measured.py --from DIR     (re-simulate saved measurements)

Measure: the demo app (``demo:small``/``demo:large`` on the HF engine, streaming glimpse on, τ
0.16, one replica each, 0.1 CPU each, spans to JSONL) on ``cluster.local``'s head + small + large
nodes. After a warm-up, each rate sends Poisson arrivals of the demo task's problems for
``--seconds`` over HTTP and waits for them to finish; the client's latency is the measured one.

Simulate: for each rate, the pools are built from the traced calls of the OTHER rates (leave one
out): per pool, ℓ(b) fitted from each call's seconds per token against the mean calls its
replica ran during it (:func:`glimp_ray.plan_model.fit_curves`), so contention for the shared
cores as the deployment runs is in the curve; the glimpse's cost is the traced mean; the
router's overhead per request and per call is a least-squares fit of (client latency − traced
model seconds) on the number of calls, over the other rates' requests. The simulator replays the
rate's own traced requests at the rate's recorded send times (:class:`TraceTimes`), so what is
compared is the queueing and batching model, not two draws of Poisson arrivals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from glimp_ray.plan_model import POOLS, fit_curves, mean_glimpse_s, traced_profile
from glimp_ray.profile import EngineProfile
from glimp_ray.sim import PoolSpec, SimConfig, TraceTimes, simulate
from glimp_ray.traces import TracedRequest, requests_from_spans

APP = "simcheck"
MODEL = "glimp-demo"


def app_config(spans_path: Path) -> dict[str, Any]:
    pool = {"num_replicas": 1, "num_cpus": 0.1}
    args = {
        "routing": {"policy": "entropy", "threshold": 0.16},
        "sampling": {"temperature": 0.6, "top_p": 0.95},
        "limits": {"step_max_tokens": 64, "thinking_budget": 512, "answer_max_tokens": 32},
        "serving": {
            "model_name": MODEL,
            "small": {**pool, "label_selector": {"glimp/pool": "small"}},
            "large": {**pool, "label_selector": {"glimp/pool": "large"}},
            "router": {"num_cpus": 0.1},
            "tracing": {"exporter": "jsonl", "path": str(spans_path)},
        },
    }
    return {
        "applications": [{"name": APP, "route_prefix": "/", "import_path": "deployments.app:build_app", "args": args}]
    }


async def one(client: Any, url: str, messages: list[dict[str, str]]) -> tuple[float, float, int]:
    sent = time.time()
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": messages})
    return sent, time.perf_counter() - start, response.status_code


async def poisson_load(url: str, rate: float, seconds: float, seed: int) -> list[tuple[float, float, int]]:
    import httpx

    from glimp_ray.demo.task import make_split

    problems = make_split("validation", 200)
    rng = random.Random(seed)
    tasks = []
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        t = rng.expovariate(rate)
        while t < seconds:
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            problem = problems[rng.randrange(len(problems))]
            tasks.append(asyncio.create_task(one(client, url, problem.messages())))
            t += rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


def measure(rates: list[float], seconds: float, out: Path, port: int) -> None:
    import httpx
    import ray
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cluster/ is not installed
    from cluster.local import start_local_cluster

    spans = out / "spans.jsonl"
    spans.unlink(missing_ok=True)
    cluster = start_local_cluster(temp_dir=tempfile.mkdtemp(prefix="glimp-simcheck-"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve_start().deploy_apps(ServeDeploySchema.model_validate(app_config(spans)))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not come up in 300 s")
            time.sleep(2)
        asyncio.run(poisson_load(url, 1.0, 15, seed=99))  # warm-up (not recorded): caches, JIT, first calls
        runs = []
        for i, rate in enumerate(rates):
            began = time.time()
            results = asyncio.run(poisson_load(url, rate, seconds, seed=i))
            runs.append({"rate": rate, "began": began, "ended": time.time(), "requests": results})
            ok = [lat for _, lat, status in results if status == 200]
            print(f"measured {rate:g}/s: {len(ok)}/{len(results)} ok, p50 {np.percentile(ok, 50):.3f} s", flush=True)
            time.sleep(3)
        time.sleep(3)  # the last spans reach the file
        (out / "measured.json").write_text(json.dumps({"seconds": seconds, "runs": runs}) + "\n")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


def binned_profile(requests: list[TracedRequest], pool: str, glimpse_s: float) -> EngineProfile:
    """ℓ(b) as the deployment ran: traced calls' seconds per token (model time over tokens, token
    weighted) binned by the mean calls their replica ran (1, 2, 4, ...: nearest in log), kept
    non-decreasing; a curve fitted through all of them (:func:`fit_curves`) extends it."""
    bins: dict[int, list[tuple[float, float]]] = {}
    for r in requests:
        for call in r.calls:
            if call.route == pool and call.tokens > 0 and call.model_s > 0:
                b = 2 ** round(math.log2(max(call.concurrency, 1.0)))
                bins.setdefault(b, []).append((call.model_s / call.tokens, call.tokens))
    decode_s: dict[int, float] = {}
    highest = 0.0
    for b in sorted(bins):
        if sum(w for _, w in bins[b]) < 50:  # too few tokens to trust
            continue
        mean = float(np.average([s for s, _ in bins[b]], weights=[w for _, w in bins[b]]))
        highest = max(highest, mean)
        decode_s[b] = highest
    if not decode_s:
        return traced_profile(pool, fit_curves(requests)[pool], 32, glimpse_s)
    base = traced_profile(pool, fit_curves(requests)[pool], 32, glimpse_s)
    return replace(base, decode_s=decode_s, notes={"source": "binned from traced calls in the deployment"})


def neighbours(runs: list[dict[str, Any]], i: int) -> list[int]:
    """The runs at the nearest lower and the nearest higher rate than run ``i`` (one at the ends)."""
    rate = runs[i]["rate"]
    lower = [j for j in range(len(runs)) if runs[j]["rate"] < rate]
    higher = [j for j in range(len(runs)) if runs[j]["rate"] > rate]
    near = []
    if lower:
        near.append(max(lower, key=lambda j: runs[j]["rate"]))
    if higher:
        near.append(min(higher, key=lambda j: runs[j]["rate"]))
    return near


def split_by_run(requests: list[TracedRequest], runs: list[dict[str, Any]]) -> list[list[TracedRequest]]:
    out: list[list[TracedRequest]] = [[] for _ in runs]
    for r in requests:
        for i, run in enumerate(runs):
            if r.start_s is not None and run["began"] <= r.start_s <= run["ended"] + 1:
                out[i].append(r)
    return out


def overheads(requests: list[TracedRequest], latencies: dict[int, float]) -> tuple[float, float]:
    """(per request, per call): least squares of client latency − model seconds on calls."""
    xs, ys = [], []
    for r in requests:
        if id(r) in latencies:
            calls = len(r.calls) + sum(s.glimpse_model_s > 0 and s.route == "large" for s in r.steps)
            xs.append(calls)
            ys.append(latencies[id(r)] - sum(c.model_s + c.glimpse_model_s for c in r.calls))
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    if slope < 0:
        return max(float(statistics.median(ys)), 0.0), 0.0
    return max(float(intercept), 0.0), float(slope)


def call_overhead(requests: list[TracedRequest], run: dict[str, Any]) -> float:
    """Mean over a run's requests of (client latency − traced model seconds) per call (the mean: its tail
    is part of the latency)."""
    latencies = match_latencies(requests, run)
    per_call = []
    for r in requests:
        if id(r) in latencies:
            calls = len(r.calls) + sum(s.glimpse_model_s > 0 and s.route == "large" for s in r.steps)
            per_call.append((latencies[id(r)] - sum(c.model_s + c.glimpse_model_s for c in r.calls)) / calls)
    return max(float(np.mean(per_call)), 0.0)


def match_latencies(requests: list[TracedRequest], run: dict[str, Any]) -> dict[int, float]:
    """Each traced request's client latency: the sent request closest in start time."""
    sent = sorted((s, lat) for s, lat, status in run["requests"] if status == 200)
    times = np.asarray([s for s, _ in sent])
    found = {}
    for r in requests:
        if r.start_s is None or not len(times):
            continue
        i = int(np.argmin(np.abs(times - r.start_s)))
        found[id(r)] = sent[i][1]
    return found


def simulate_runs(out: Path, seed: int = 0, calibrate: str = "neighbours") -> list[dict[str, float]]:
    data = json.loads((out / "measured.json").read_text())
    runs = data["runs"]
    spans = [json.loads(line) for line in (out / "spans.jsonl").read_text().splitlines() if line.strip()]
    per_run = split_by_run(requests_from_spans(spans), runs)
    rows = []
    for i, run in enumerate(runs):
        use = [i] if calibrate == "own" else neighbours(runs, i)
        others = [r for j in use for r in per_run[j]]
        latencies: dict[int, float] = {}
        for j, rs in enumerate(per_run):
            if j in use:
                latencies.update(match_latencies(rs, runs[j]))
        glimpse = mean_glimpse_s(others)
        # The router's and Ray's time per call grows with load here (they share the 2 cores with
        # the replicas): each calibration run's median per call, interpolated at this rate.
        per_call = float(
            np.interp(run["rate"], [runs[j]["rate"] for j in use], [call_overhead(per_run[j], runs[j]) for j in use])
        )
        per_request = 0.0
        pools = {pool: PoolSpec(binned_profile(others, pool, glimpse if pool == "small" else 0.0), 1) for pool in POOLS}
        sent = [s for s, _, status in run["requests"] if status == 200]
        config = SimConfig(
            requests=per_run[i],
            pools=pools,
            arrivals=TraceTimes(tuple(sent)),
            duration_s=data["seconds"] + 1,
            router_overhead_s=per_request,
            call_overhead_s=per_call,
            seed=seed,
        )
        sim = simulate(config)
        measured = [lat for _, lat, status in run["requests"] if status == 200]
        m50, m95 = (float(v) for v in np.percentile(measured, [50, 95]))
        rows.append(
            {
                "rate": run["rate"],
                "requests": len(measured),
                "measured_p50_s": m50,
                "measured_p95_s": m95,
                "sim_p50_s": sim.p50_s,
                "sim_p95_s": sim.p95_s,
                "err_p50": sim.p50_s / m50 - 1,
                "err_p95": sim.p95_s / m95 - 1,
            }
        )
    return rows


def table(rows: list[dict[str, float]]) -> str:
    lines = [
        "| rate (req/s) | requests | measured p50 (s) | measured p95 (s) | simulated p50 (s) | simulated p95 (s) "
        "| error p50 | error p95 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']:g} | {r['requests']:.0f} | {r['measured_p50_s']:.3f} | {r['measured_p95_s']:.3f} "
            f"| {r['sim_p50_s']:.3f} | {r['sim_p95_s']:.3f} | {r['err_p50']:+.1%} | {r['err_p95']:+.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="0.5,1.5,3,4.5", help="comma-separated Poisson rates (requests/s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of arrivals per rate")
    parser.add_argument("--out", default="/tmp/glimp-simcheck", help="where measurements and spans go")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument(
        "--calibrate",
        choices=("neighbours", "own"),
        default="neighbours",
        help="pools and overheads from the traces of the nearest lower and higher rates (default: held out) "
        "or from the rate's own traces (in-sample)",
    )
    parser.add_argument("--from", dest="source", help="re-simulate the measurements saved in this directory")
    args = parser.parse_args(argv)
    out = Path(args.source or args.out)
    if not args.source:
        out.mkdir(parents=True, exist_ok=True)
        measure([float(r) for r in args.rates.split(",")], args.seconds, out, args.port)
    rows = simulate_runs(out, calibrate=args.calibrate)
    (out / f"table-{args.calibrate}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

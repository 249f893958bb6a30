"""The simulator against real runs: the demo pair on the labelled local cluster, one replica per pool.

    python benchmarks/bench_sim_vs_measured.py [--rates 0.5,1,1.5,2,2.5] [--seconds 60] [--out DIR]
    python benchmarks/bench_sim_vs_measured.py --from DIR [--calibrate neighbours|others|own]
                                               [--model shared|pool]   (re-simulate saved runs)

Measure: the demo app (``demo:small``/``demo:large`` on the HF engine, streaming glimpse on, τ
0.16, one replica each, 0.1 CPU each, spans to JSONL) on ``cluster.local``'s head + small + large
nodes. After a warm-up, each rate sends Poisson arrivals of the demo task's problems for
``--seconds`` over HTTP and waits for them to finish; the client's latency is the measured one.
The machine's load averages are recorded before and after each rate.

Simulate each rate from the traces of other rates (``--calibrate neighbours``, the default: the
nearest lower and higher rate; ``others``: every other rate; ``own`` is in-sample), with the
``shared`` model of this machine (:mod:`glimp_ray.sim.calibrate`, :mod:`glimp_ray.sim.machine`):

- per pool ℓ(b) from the calibration runs' traced calls, and the contention between the pools
  and the machine's speed noise fitted from the same calls;
- calls join a busy replica at the next forward (``joins_at_forward``);
- the router's time per call: a least-squares line of (client latency − traced model seconds −
  the engines' queue seconds) / calls against the requests running while each request ran, over
  the calibration runs' requests;
- the workload: the rate's own traced requests, replayed in the order and at the times they were
  sent (``in_order``), so that what is compared is the model of the deployment, not two draws of
  arrivals or of problems;
- ``--seeds`` simulations (the speed noise's draws): their mean p50 and p95, and the p95's range.

``--model pool`` is the model without the shared machine: each pool's curve of its own
concurrency, no joins, a constant time per call (each calibration run's mean, engines' queues
included, interpolated at the rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from glimp_ray.sim import PoolSpec, SimConfig, TraceTimes, simulate
from glimp_ray.sim.calibrate import calibrate as calibrate_pools
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
    # On a loaded 2-core machine the proxy can miss Serve's 10 s health checks three times and
    # be restarted mid-run (its connections dropped); give it longer (set before Ray starts).
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
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
            began, load = time.time(), os.getloadavg()
            results = asyncio.run(poisson_load(url, rate, seconds, seed=i))
            runs.append(
                {
                    "rate": rate,
                    "began": began,
                    "ended": time.time(),
                    "load_before": load,  # the machine's 1, 5 and 15 minute load averages
                    "load_after": os.getloadavg(),
                    "requests": results,
                }
            )
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


def calibration_runs(runs: list[dict[str, Any]], i: int, calibrate: str) -> list[int]:
    if calibrate == "own":
        return [i]
    if calibrate == "others":
        return [j for j in range(len(runs)) if j != i]
    return neighbours(runs, i)


def split_by_run(requests: list[TracedRequest], runs: list[dict[str, Any]]) -> list[list[TracedRequest]]:
    """Each run's traced requests, in the order they started."""
    out: list[list[TracedRequest]] = [[] for _ in runs]
    for r in requests:
        for i, run in enumerate(runs):
            if r.start_s is not None and run["began"] <= r.start_s <= run["ended"] + 1:
                out[i].append(r)
    return [sorted(rs, key=lambda r: r.start_s or 0.0) for rs in out]


def match_latencies(requests: list[TracedRequest], run: dict[str, Any]) -> dict[int, tuple[float, float]]:
    """Each traced request's (send time, client latency): in order when every sent request was
    traced (they are the same requests), else the sent request closest in start time."""
    sent = sorted((s, lat) for s, lat, status in run["requests"] if status == 200)
    if len(sent) == len(requests):
        return {id(r): pair for r, pair in zip(requests, sent, strict=True)}
    times = np.asarray([s for s, _ in sent])
    found = {}
    for r in requests:
        if r.start_s is not None and len(times):
            found[id(r)] = sent[int(np.argmin(np.abs(times - r.start_s)))]
    return found


def pool_calls(request: TracedRequest) -> int:
    """The pool calls a traced request made: its steps and answer, and a glimpse before each large step."""
    return len(request.calls) + sum(s.glimpse_model_s > 0 and s.route == "large" for s in request.steps)


def in_flight(requests: list[TracedRequest]) -> dict[int, float]:
    """Each request's mean number of requests running (itself included) while it ran."""
    spans = sorted((r.start_s, r.end_s) for r in requests if r.start_s is not None and r.end_s is not None)
    found = {}
    for r in requests:
        if r.start_s is None or r.end_s is None or r.end_s <= r.start_s:
            continue
        overlap = sum(max(0.0, min(r.end_s, e) - max(r.start_s, s)) for s, e in spans if s < r.end_s and e > r.start_s)
        found[id(r)] = overlap / (r.end_s - r.start_s)
    return found


def overhead_samples(
    requests: list[TracedRequest], run: dict[str, Any], queue_s: dict[str, float]
) -> list[tuple[float, float]]:
    """(requests in flight, seconds per pool call outside the models) for each of a run's
    requests: client latency − traced model seconds − (``queue_s`` given) the engines' queue."""
    latencies = match_latencies(requests, run)
    running = in_flight(requests)
    samples = []
    for r in requests:
        if id(r) in latencies and id(r) in running:
            outside = latencies[id(r)][1] - sum(c.model_s + c.glimpse_model_s for c in r.calls)
            samples.append((running[id(r)], (outside - queue_s.get(r.trace_id, 0.0)) / pool_calls(r)))
    return samples


def engine_queue_s(spans: list[dict[str, Any]]) -> dict[str, float]:
    """Per trace, the seconds its calls waited in the engines for a forward to join."""
    queued: dict[str, float] = {}
    for span in spans:
        value = span.get("attributes", {}).get("glimp.queue_s")
        if value is not None:
            queued[span["trace_id"]] = queued.get(span["trace_id"], 0.0) + float(value)
    return queued


def simulate_runs(
    out: Path, calibrate: str = "neighbours", model: str = "shared", seeds: int = 8
) -> list[dict[str, float]]:
    """Simulate every run from the traces of ``calibrate``'s runs (see the module docstring)."""
    data = json.loads((out / "measured.json").read_text())
    runs = data["runs"]
    spans = [json.loads(line) for line in (out / "spans.jsonl").read_text().splitlines() if line.strip()]
    per_run = split_by_run(requests_from_spans(spans), runs)
    queue_s = engine_queue_s(spans) if model == "shared" else {}
    rows = []
    for i, run in enumerate(runs):
        use = sorted(calibration_runs(runs, i, calibrate), key=lambda j: runs[j]["rate"])
        calibration = calibrate_pools([r for j in use for r in per_run[j]], shared_machine=model == "shared")
        pools = {
            pool: PoolSpec(profile, 1, joins_at_forward=model == "shared")
            for pool, profile in calibration.profiles.items()
        }
        per_request_s = 0.0
        if model == "shared":
            # The router's time per call grows with the requests it runs (it shares the cores):
            # a line through every calibration request's (in flight, seconds per call outside
            # the models and the engines' queues).
            samples = [x for j in use for x in overhead_samples(per_run[j], runs[j], queue_s)]
            slope, per_call = np.polyfit([x for x, _ in samples], [y for _, y in samples], 1)
            per_request_s = max(float(slope), 0.0)
            per_call = max(float(per_call), 0.0) if per_request_s else float(np.mean([y for _, y in samples]))
        else:
            # Per call: each calibration run's mean, interpolated at this rate.
            means = [float(np.mean([y for _, y in overhead_samples(per_run[j], runs[j], {})])) for j in use]
            per_call = max(float(np.interp(run["rate"], [runs[j]["rate"] for j in use], means)), 0.0)
        requests = per_run[i]
        sent = match_latencies(requests, run)
        times = tuple(sent[id(r)][0] for r in requests if id(r) in sent)
        requests = [r for r in requests if id(r) in sent]
        p50, p95 = [], []
        for seed in range(seeds if model == "shared" else 1):
            config = SimConfig(
                requests=requests,
                pools=pools,
                arrivals=TraceTimes(times),
                duration_s=data["seconds"] + 1,
                call_overhead_s=per_call,
                call_overhead_per_request_s=per_request_s,
                seed=seed,
                in_order=True,
                contention=calibration.contention,
                noise=calibration.noise,
            )
            sim = simulate(config)
            p50.append(sim.p50_s)
            p95.append(sim.p95_s)
        measured = [lat for _, lat, status in run["requests"] if status == 200]
        m50, m95 = (float(v) for v in np.percentile(measured, [50, 95]))
        s50, s95 = float(np.mean(p50)), float(np.mean(p95))
        rows.append(
            {
                "rate": run["rate"],
                "requests": len(measured),
                "measured_p50_s": m50,
                "measured_p95_s": m95,
                "sim_p50_s": s50,
                "sim_p95_s": s95,
                "sim_p95_low_s": min(p95),
                "sim_p95_high_s": max(p95),
                "err_p50": s50 / m50 - 1,
                "err_p95": s95 / m95 - 1,
                "calibrated_from": [runs[j]["rate"] for j in use],
                "call_overhead_s": per_call,
                "call_overhead_per_request_s": per_request_s,
                "contention": {k: dict(v) for k, v in calibration.contention.busy_s.items()}
                if calibration.contention
                else None,
                "noise": asdict(calibration.noise) if calibration.noise else None,
                "decode_s": {p: calibration.profiles[p].decode_s for p in calibration.profiles},
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rate (req/s) | requests | measured p50 (s) | measured p95 (s) | simulated p50 (s) | simulated p95 (s) "
        "| error p50 | error p95 | simulated p95, seeds' range (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']:g} | {r['requests']:.0f} | {r['measured_p50_s']:.3f} | {r['measured_p95_s']:.3f} "
            f"| {r['sim_p50_s']:.3f} | {r['sim_p95_s']:.3f} | {r['err_p50']:+.1%} | {r['err_p95']:+.1%} "
            f"| {r['sim_p95_low_s']:.2f}–{r['sim_p95_high_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="0.5,1,1.5,2,2.5", help="comma-separated Poisson rates (requests/s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of arrivals per rate")
    parser.add_argument("--out", default="/tmp/glimp-simcheck", help="where measurements and spans go")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument(
        "--calibrate",
        choices=("neighbours", "others", "own"),
        default="neighbours",
        help="pools and overheads from the traces of the nearest lower and higher rates (default), of every "
        "other rate (both held out), or of the rate's own traces (in-sample)",
    )
    parser.add_argument(
        "--model",
        choices=("shared", "pool"),
        default="shared",
        help="shared (default): the pools and the router share this machine's cores (contention between the "
        "pools, the machine's speed noise, joins at forward boundaries, router time growing with the requests "
        "in flight); pool: each pool's curve of its own concurrency only, a constant time per call",
    )
    parser.add_argument("--seeds", type=int, default=8, help="simulations per rate with the shared model (averaged)")
    parser.add_argument("--from", dest="source", help="re-simulate the measurements saved in this directory")
    args = parser.parse_args(argv)
    out = Path(args.source or args.out)
    if not args.source:
        out.mkdir(parents=True, exist_ok=True)
        measure([float(r) for r in args.rates.split(",")], args.seconds, out, args.port)
    rows = simulate_runs(out, calibrate=args.calibrate, model=args.model, seeds=args.seeds)
    (out / f"table-{args.model}-{args.calibrate}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

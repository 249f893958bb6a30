"""Online τ under overload: a load step on a large pool capped at one replica, with and without
``routing.overload``.

Serves the demo pair through Ray Serve (large pool fixed at one replica), then runs three phases
of closed-loop clients — light, heavy, light — once with the overload control and once without.
Prints p95 latency, large-step share and mean τ per phase for both runs, and writes a PNG of τ,
large share and p95 over time for the controlled run (``docs/overload.png`` by default).

    python benchmarks/bench_overload.py [--light 1] [--heavy 12] [--phase-s 30,40,30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from demo_app import DEMO_TAU, MODEL, demo_app_args

from glimp_ray.demo.task import make_split, verify
from glimp_ray.eval.metrics import percentile

OVERLOAD = {"max_token_s": 0.02, "tau_max": 0.5, "raise_step": 0.1, "fall_step": 0.05, "window": 8}


async def run_phases(base: str, phases: list[tuple[str, int, float]]) -> list[dict[str, Any]]:
    """Closed-loop clients per phase; one row per finished request."""
    problems = make_split("test", 300)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    async def client(http: httpx.AsyncClient, phase: str, until: float, offset: int) -> None:
        n = offset
        while time.perf_counter() < until:
            problem = problems[n % len(problems)]
            body = {"model": MODEL, "messages": problem.messages(), "glimp": {"return_trace": True}}
            t0 = time.perf_counter()
            r = await http.post(f"{base}/v1/chat/completions", json=body)
            r.raise_for_status()
            reply = r.json()
            steps = reply["glimp"]["steps"]
            taus = [s["threshold"] for s in steps if s["threshold"] is not None]
            rows.append(
                {
                    "phase": phase,
                    "end": time.perf_counter() - start,
                    "latency": time.perf_counter() - t0,
                    "large": sum(s["model"] == "large" for s in steps) / max(len(steps), 1),
                    "tau": sum(taus) / len(taus) if taus else float("nan"),
                    "correct": verify(reply["choices"][0]["message"]["content"], problem.answer),
                }
            )
            n += 97

    async with httpx.AsyncClient(timeout=600) as http:
        for phase, clients, seconds in phases:
            until = time.perf_counter() + seconds
            await asyncio.gather(*(client(http, phase, until, i * 13) for i in range(clients)))
    return rows


def summary(rows: list[dict[str, Any]], phase: str) -> tuple[float, float, float, int, float]:
    chosen = [r for r in rows if r["phase"] == phase]
    latencies = [r["latency"] for r in chosen]
    return (
        percentile(latencies, 95),
        sum(r["large"] for r in chosen) / len(chosen),
        sum(r["tau"] for r in chosen) / len(chosen),
        len(chosen),
        sum(r["correct"] for r in chosen) / len(chosen),
    )


def plot(rows: list[dict[str, Any]], baseline: list[dict[str, Any]], path: Path, bounds: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rolling(data: list[dict[str, Any]], key: str, fn: Any, width: float = 6.0) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in data:
            window = [q[key] for q in data if r["end"] - width <= q["end"] <= r["end"]]
            xs.append(r["end"])
            ys.append(fn(window))
        return xs, ys

    fig, axes = plt.subplots(3, 1, figsize=(7, 7), dpi=110, sharex=True)
    axes[0].plot(*rolling(rows, "tau", lambda v: sum(v) / len(v)), label="τ (overload control)")
    axes[0].set_ylabel("τ (nats)")
    axes[1].plot(*rolling(rows, "large", lambda v: sum(v) / len(v)), label="overload control")
    axes[1].plot(*rolling(baseline, "large", lambda v: sum(v) / len(v)), "--", label="fixed τ")
    axes[1].set_ylabel("large-step share")
    axes[2].plot(*rolling(rows, "latency", lambda v: percentile(v, 95)), label="overload control")
    axes[2].plot(*rolling(baseline, "latency", lambda v: percentile(v, 95)), "--", label="fixed τ")
    axes[2].set_ylabel("p95 latency (s), 6 s window")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        for x in bounds:
            ax.axvline(x, color="gray", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--light", type=int, default=1, help="clients in the light phases")
    parser.add_argument("--heavy", type=int, default=12, help="clients in the heavy phase")
    parser.add_argument("--phase-s", default="30,40,30", help="seconds of light, heavy, light")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs" / "overload.png")
    parser.add_argument("--port", type=int, default=8125)
    parser.add_argument("--tau-max", type=float, default=OVERLOAD["tau_max"], help="the accuracy bound")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from deployments import serve_env
    from deployments.app import build_app

    light1, heavy, light2 = (float(s) for s in args.phase_s.split(","))
    phases = [("light", args.light, light1), ("heavy", args.heavy, heavy), ("light again", args.light, light2)]
    results = {}
    serve_env.apply()  # Serve's throughput-optimized mode for the cluster, as the project serves
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for controlled in (True, False):
            routing: dict[str, Any] = {"policy": "entropy", "threshold": DEMO_TAU}
            if controlled:
                routing["overload"] = {**OVERLOAD, "tau_max": args.tau_max}
            serve.run(build_app(demo_app_args(routing)), name="bench", route_prefix="/")
            base = f"http://127.0.0.1:{args.port}"
            asyncio.run(run_phases(base, [("warm-up", 2, 5.0)]))
            results[controlled] = asyncio.run(run_phases(base, phases))
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"demo pair, large pool fixed at 1 replica; overload control { ({**OVERLOAD, 'tau_max': args.tau_max}) }")
    print("| run | phase | requests | accuracy | p95 latency (s) | large steps | mean τ |")
    print("|---|---|---|---|---|---|---|")
    for controlled, name in ((False, "fixed τ 0.16"), (True, "overload control")):
        for phase, _, _ in phases:
            p95, large, tau, n, accuracy = summary(results[controlled], phase)
            print(f"| {name} | {phase} | {n} | {accuracy:.1%} | {p95:.3f} | {large:.1%} | {tau:.3f} |")
    bounds = [light1, light1 + heavy]
    plot(results[True], results[False], args.out, bounds)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

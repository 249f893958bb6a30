"""What the step signals cost, through the HTTP API: a post-step policy whose signal never triggers
against the small model writing every step, and shadow policies beside GlimpRouter.

    python benchmarks/bench_signal_cost.py [--problems 12] [--rounds 3]

The router's FastAPI app (``deployments.in_process``: validation, flow control, the loop and the
response as served, over httpx's ASGI transport; the Ray calls to the pools left out) over the
demo pair on the HF engine in this process, greedy, the answer by the large model for every arm.
Four arms, interleaved per problem so that the machine's drift hits each alike:

- ``small``: every step on the small model (policy ``small``);
- ``h_step never``: ``h_step`` at τ = 1e9, so the small model writes every step and the engine
  computes the step signals (one call a step: post-step policies do not stream runs of steps);
- ``entropy``: GlimpRouter at τ (``--threshold``);
- ``entropy + shadows``: the same with every shadow policy that needs no model work (top1,
  margin, h_step, ppl_step, min_prob, cue).

Greedy decoding writes the same text in each pair of arms (checked), so a latency ratio is the
cost of the signals alone. It prints each arm's median and mean latency, and the ratios of the
medians (h_step never / small, entropy + shadows / entropy) over the requests of one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx

ARMS: dict[str, dict[str, Any]] = {
    "small": {"policy": "small"},
    "h_step never": {"policy": "h_step", "threshold": 1e9},
    "entropy": {"policy": "entropy"},
    "entropy + shadows": {
        "policy": "entropy",
        "shadow": {"top1": 0.5, "margin": 0.2, "h_step": 1.0, "ppl_step": 2.0, "min_prob": 0.1, "cue": 0.0},
    },
}
PAIRS = (("h_step never", "small"), ("entropy + shadows", "entropy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=12, help="demo test problems per round")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the problems")
    parser.add_argument("--threshold", type=float, default=0.16, help="GlimpRouter's τ (the demo config's)")
    args = parser.parse_args()

    from deployments.in_process import MODEL, router_over, serve
    from glimp_ray.config import ModelConfig
    from glimp_ray.demo.task import make_split

    small, large = ModelConfig(model="demo:small").load_engine(), ModelConfig(model="demo:large").load_engine()
    router = router_over(
        small,
        large,
        small={"model": "demo:small"},
        large={"model": "demo:large"},
        routing={"threshold": args.threshold},
        sampling={"temperature": 0.0},
        limits={"answer_model": "large"},
        serving={"model_name": MODEL, "tracing": {"exporter": "none"}},
    )
    problems = make_split("test", args.problems)
    latencies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    texts: dict[str, list[str]] = {arm: [] for arm in ARMS}

    async def run(base: str, http: httpx.AsyncClient) -> None:
        for _ in range(args.rounds + 1):  # the first round warms up, unrecorded
            for problem in problems:
                for arm, glimp in ARMS.items():
                    body = {
                        "model": MODEL,
                        "messages": problem.messages(),
                        "glimp": {"return_trace": True, **glimp},
                    }
                    start = time.perf_counter()
                    response = await http.post(f"{base}/v1/chat/completions", json=body)
                    elapsed = time.perf_counter() - start
                    response.raise_for_status()
                    steps = response.json()["glimp"]["steps"]
                    latencies[arm].append(elapsed)
                    texts[arm].append("".join(s["text"] for s in steps))
        for values in (*latencies.values(), *texts.values()):
            del values[: len(problems)]  # drop the warm-up round

    started = time.perf_counter()
    try:
        serve(router, run)
    finally:
        small.close()
        large.close()
    print(f"{args.rounds} rounds × {len(problems)} demo problems per arm, greedy, through the HTTP API in process")
    print(f"{'arm':<20} {'median (s)':>11} {'mean (s)':>9}")
    for arm, values in latencies.items():
        print(f"{arm:<20} {statistics.median(values):>11.4f} {statistics.fmean(values):>9.4f}")
    for arm, base in PAIRS:
        same = texts[arm] == texts[base]
        ratio = statistics.median(latencies[arm]) / statistics.median(latencies[base])
        paired = statistics.median(a / b for a, b in zip(latencies[arm], latencies[base], strict=True))
        print(
            f"{arm} / {base}: median latency ratio {ratio:.3f}, median of paired ratios {paired:.3f} "
            f"({'same thinking text' if same else 'THE THINKING TEXT DIFFERS'})"
        )
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

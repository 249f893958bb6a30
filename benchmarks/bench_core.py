"""Core benchmark: one request through the in-process loop on two local models.

Reports (1) time inside model forwards vs end-to-end time in the loop, (2) prefilled
tokens over context tokens for each model, (3) fused vs paper mode latency at identical
greedy output. Default models are the tiny random pair built on the fly; ``--config``
runs any local pair.

    python benchmarks/bench_core.py [--config FILE] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from typing import Any

from glimp_ray.collab import Collaborator, CollabParams, CollabResult
from glimp_ray.engine.hf import HFEngine
from glimp_ray.engine.recording import RecordingClient

MESSAGES = [{"role": "user", "content": "What is 6 times 7? Think step by step."}]


def load_pair(args: argparse.Namespace) -> tuple[HFEngine, HFEngine, CollabParams]:
    if args.config:
        from glimp_ray.config import load_config

        config = load_config(args.config)
        small = HFEngine.load(**config.small.engine_kwargs())
        large = HFEngine.load(**config.large.engine_kwargs())
        return small, large, config.collab_params().replace(temperature=0.0)
    from glimp_ray.tiny import build_tiny_pair

    small_dir, large_dir = build_tiny_pair(tempfile.mkdtemp(prefix="glimp-bench-"))
    params = CollabParams(temperature=0.0, delimiter=" ", step_max_tokens=48, thinking_budget=384, answer_max_tokens=32)
    return HFEngine.load(str(small_dir)), HFEngine.load(str(large_dir)), params


def run_once(
    small: HFEngine, large: HFEngine, params: CollabParams, **overrides: Any
) -> tuple[CollabResult, RecordingClient, RecordingClient]:
    recorders = RecordingClient(small), RecordingClient(large)
    result = asyncio.run(Collaborator(*recorders, params).run(MESSAGES, **overrides))
    return result, *recorders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config of a local model pair (default: tiny random pair)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median reported)")
    parser.add_argument("--threshold", type=float, help="τ (default: median glimpse entropy, so both routes occur)")
    args = parser.parse_args(argv)

    small, large, params = load_pair(args)
    probe, _, _ = run_once(small, large, params, policy="small")  # also warms both engines up
    tau = args.threshold if args.threshold is not None else statistics.median(s.entropy or 0 for s in probe.steps)
    params = params.replace(threshold=tau)
    print(f"models: small={small.name} large={large.name}  τ={tau:.4f}  repeats={args.repeats}")

    result, rec_small, rec_large = run_once(small, large, params)
    model_s = sum(r.model_s for r in rec_small.results + rec_large.results)
    print("\n[1] time in model forwards vs end-to-end (fused, one request)")
    print(
        f"    steps={len(result.steps)} large-step fraction={result.large_step_fraction:.2f} "
        f"tokens={result.completion_tokens}"
    )
    print(
        f"    end-to-end {result.latency_s * 1000:.1f} ms, in model {model_s * 1000:.1f} ms, "
        f"loop overhead {(result.latency_s - model_s) / result.latency_s:.1%}"
    )

    print("\n[2] prefilled tokens / context tokens per model (each token forwarded once = prefill < context)")
    for name, rec in (("small", rec_small), ("large", rec_large)):
        prefilled = sum(r.prefill_tokens for r in rec.results)
        last = rec.results[-1]
        context = last.context_tokens + last.generated_tokens
        print(
            f"    {name}: calls={len(rec.results)} prefilled={prefilled} context={context} "
            f"ratio={prefilled / context:.3f} reused={sum(r.reused_tokens for r in rec.results)}"
        )

    print("\n[3] fused vs paper mode at greedy decoding")
    latencies: dict[str, list[float]] = {"fused": [], "paper": []}
    outputs: dict[str, set[tuple[str, str]]] = {"fused": set(), "paper": set()}
    work: dict[str, tuple[int, int]] = {}
    for repeat in range(args.repeats):
        # Alternate the order so drift on a noisy machine does not favour one mode.
        for mode in ("fused", "paper") if repeat % 2 == 0 else ("paper", "fused"):
            forwarded = small.forwarded_tokens + large.forwarded_tokens
            start = time.perf_counter()
            res, rs, rl = run_once(small, large, params, mode=mode)
            latencies[mode].append(time.perf_counter() - start)
            outputs[mode].add((res.reasoning, res.answer))
            calls = len(rs.results) + len(rl.results)
            work[mode] = (calls, small.forwarded_tokens + large.forwarded_tokens - forwarded)
    identical = outputs["fused"] == outputs["paper"] and len(outputs["fused"]) == 1
    fused, paper = (statistics.median(latencies[m]) for m in ("fused", "paper"))
    print(f"    identical output: {identical}")
    for mode in ("fused", "paper"):
        print(f"    {mode}: model calls={work[mode][0]} tokens forwarded={work[mode][1]}")
    print(
        f"    fused median {fused * 1000:.1f} ms, paper median {paper * 1000:.1f} ms, fused/paper = {fused / paper:.3f}"
    )
    small.close()
    large.close()
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

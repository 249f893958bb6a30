"""Continuous-batching benchmark: one engine serving 1 vs 16 concurrent requests.

On the demo models with configs/demo-local.yaml's sampling (temperature 0.6, top-p 0.95), for
each model-server replica, i.e. one engine and the loop driving it in this process (the small
pool runs fused glimpse + step calls, policy small; the large pool runs step calls, policy
large), it prints in one run:

1. a single request's p50 latency with the batching engine and with the unbatched one
   (``batching: false``, one sequence per forward), alternating, and their ratio;
2. total generated tokens/s with 16 requests in flight (the median of ``--repeats`` runs)
   against one at a time (batching engine), their ratio, and the decode batch sizes seen;
3. whether greedy outputs with 16 in flight are identical to the unbatched engine's.

Then, for information, the whole pair in one process (both engines, τ 0.16) at 1 and 16: two
engine threads in one process contend for the 2 cores, which a deployment (one replica per
process) does not have.

    python benchmarks/bench_batching.py [--requests 64] [--repeats 3] [--concurrency 16] [--single 24]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from typing import Any

from glimp_ray.collab import Collaborator, CollabResult
from glimp_ray.config import ModelConfig, load_config
from glimp_ray.demo.task import make_split
from glimp_ray.engine.hf import HFEngine

Done = list[tuple[float, CollabResult]]


def load(model: ModelConfig, batching: bool) -> HFEngine:
    return HFEngine.load(**{**model.engine_kwargs(), "batching": batching})


def count_batch_sizes(engine: HFEngine) -> Counter[int]:
    sizes: Counter[int] = Counter()
    step = engine.batch.step

    def counted(tokens: Any) -> Any:
        sizes[len(tokens)] += 1
        return step(tokens)

    engine.batch.step = counted  # type: ignore[method-assign]
    return sizes


def run(collab: Collaborator, prompts: list[Any], concurrency: int, **overrides: Any) -> tuple[float, Done]:
    """Wall time and (latency, result) of every prompt with ``concurrency`` in flight."""

    async def main() -> Done:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, messages: Any) -> tuple[float, CollabResult]:
            async with gate:
                start = time.perf_counter()
                result = await collab.run(messages, request_id=f"r{i}", **overrides)
                return time.perf_counter() - start, result

        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(prompts))))

    start = time.perf_counter()
    done = asyncio.run(main())
    return time.perf_counter() - start, done


def tokens(done: Done) -> int:
    return sum(r.completion_tokens for _, r in done)


def same_outputs(a: Done, b: Done) -> int:
    def key(r: CollabResult) -> Any:
        return r.answer, [(s.model, s.text) for s in r.steps]

    return sum(key(x) == key(y) for (_, x), (_, y) in zip(a, b, strict=True))


def bench_replica(pool: str, model: ModelConfig, params: Any, prompts: list[Any], args: Any) -> None:
    # One engine is the whole replica: the loop only calls ``pool`` (glimpses too, for small).
    # The unbatched runs switch the same engine's batching off while it is idle: a second engine
    # thread in this process would slow both (their OpenMP workers contend for the 2 cores).
    engine = load(model, batching=True)
    collab = Collaborator(engine, engine, params)

    def timed(batching: bool, messages: Any) -> tuple[float, Done]:
        engine.batching = batching
        return run(collab, messages, 1, policy=pool)

    timed(True, prompts[:2])  # warm-up
    timed(False, prompts[:2])
    latency: dict[str, list[float]] = {"batched": [], "plain": []}
    single_tokens = single_wall = 0.0
    for messages in prompts[: args.single]:  # alternating, so drift hits both alike
        for name in ("batched", "plain"):
            wall, done = timed(name == "batched", [messages])
            latency[name].append(wall)
            if name == "batched":
                single_tokens, single_wall = single_tokens + tokens(done), single_wall + wall
    p50 = {name: statistics.median(values) for name, values in latency.items()}
    engine.batching = True
    sizes = count_batch_sizes(engine)
    rates = []
    for _ in range(args.repeats):
        wall, done = run(collab, prompts, args.concurrency, policy=pool)
        rates.append(tokens(done) / wall)
    single_rate, rate = single_tokens / single_wall, statistics.median(rates)
    forwards = sum(sizes.values()) // args.repeats
    mean_rows = sum(k * v for k, v in sizes.items()) / max(sum(sizes.values()), 1)
    print(f"[{pool} pool replica: {model.model.split('/')[-1]}]")
    print(
        f"  single request p50: batching {p50['batched'] * 1000:.1f} ms, unbatched {p50['plain'] * 1000:.1f} ms"
        f"  -> batching/unbatched = {p50['batched'] / p50['plain']:.3f} (goal <= 1.10)"
    )
    print(
        f"  tokens/s: one at a time {single_rate:.1f}; {args.concurrency} in flight, {len(prompts)} requests "
        f"({tokens(done)} tokens) x {args.repeats}: {', '.join(f'{r:.1f}' for r in rates)}, median {rate:.1f}"
        f"  -> {rate / single_rate:.2f}x (goal >= 4)"
    )
    print(f"  decode forwards per run: {forwards}, mean rows {mean_rows:.1f}, max {max(sizes, default=0)}")
    collab.params = params.replace(temperature=0.0)
    _, together = run(collab, prompts[: args.concurrency], args.concurrency, policy=pool)
    engine.batching = False
    _, alone = run(collab, prompts[: args.concurrency], 1, policy=pool)
    same = same_outputs(together, alone)
    print(f"  greedy: {same}/{len(together)} identical, {args.concurrency} in flight vs unbatched")
    engine.close()


def bench_pair(config: Any, params: Any, prompts: list[Any], args: Any) -> None:
    small, large = load(config.small, True), load(config.large, True)
    collab = Collaborator(small, large, params)
    run(collab, prompts[:2], 1)
    single_wall, single = run(collab, prompts[: args.single], 1)
    wall, done = run(collab, prompts, args.concurrency)
    single_rate, rate = tokens(single) / single_wall, tokens(done) / wall
    print(f"[both pools in one process, τ {params.threshold}: for information]")
    print(
        f"  tokens/s: one at a time {single_rate:.1f}, {args.concurrency} in flight {rate:.1f}"
        f"  -> {rate / single_rate:.2f}x (two engines and the loop share the 2 cores)"
    )
    small.close()
    large.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo-local.yaml")
    parser.add_argument("--requests", type=int, default=64, help="requests in each concurrent run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--single", type=int, default=24, help="requests timed one at a time, per engine mode")
    parser.add_argument("--repeats", type=int, default=3, help="concurrent runs; their median counts")
    parser.add_argument("--skip-pair", action="store_true", help="only the per-replica figures")
    args = parser.parse_args()
    config = load_config(args.config)
    params = config.collab_params()
    prompts = [p.messages() for p in make_split("test", args.requests)]
    for pool in ("small", "large"):
        bench_replica(pool, getattr(config, pool), params, prompts, args)
    if not args.skip_pair:
        bench_pair(config, params, prompts, args)


if __name__ == "__main__":
    main()

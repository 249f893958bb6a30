"""Soak: minutes of mixed traffic against the demo app, with every replica's memory sampled.

Serves the demo pair through Ray Serve (one replica per pool, as ``make serve``), then runs
``--clients`` closed-loop clients for ``--minutes``. Each client takes its next request kind in
turn: a chat completion, a streamed one read to the end, a streamed one hung up after its first
chunks, a completion and a streamed completion. Every ``--sample-s`` it records each Serve
replica process's RSS (from ``/proc``, found by the process title Ray gives replicas) and each
pool's sessions and cached KV tokens; after the clients stop it waits for the pools to come to
rest. It prints per replica the peak RSS in each third of the run and the check the issue asks
for: the last third's peak no higher than the middle third's plus 10%; and the requests by kind
(a hang-up is the client's, not a failure). ``--out`` writes the samples as JSON.

    python benchmarks/bench_soak.py [--minutes 10] [--clients 8] [--sample-s 5] [--out soak.json]

Linux only (``/proc``). What the memory is: docs/serving.md, "Memory".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bench_streaming import wait_ready
from demo_app import MODEL, demo_app_args

from glimp_ray.demo.task import make_split
from glimp_ray.process_memory import rss_bytes

APP = "soak"
KINDS = ("chat", "chat-stream", "chat-hang-up", "completion", "completion-stream")
HANG_UP_AFTER = 3  # chunks a hang-up reads before it closes the connection
GIB = 1024**3


def replica_processes() -> dict[str, int]:
    """``deployment -> pid`` of this app's Serve replicas on this machine (Ray titles a replica's
    process ``ray::ServeReplica:<app>:<deployment>[.<method>]``), and Serve's proxy."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        prefix = f"ray::ServeReplica:{APP}:"
        if title.startswith(prefix):
            name = title[len(prefix) :].split()[0].split(".")[0]  # Ray appends the method it runs
            found[name if name not in found else f"{name}-{entry}"] = int(entry)
        elif title.startswith("ray::ProxyActor"):
            found["proxy"] = int(entry)
    return found


async def pool_stats() -> dict[str, dict[str, Any]]:
    from ray import serve

    stats = {}
    for pool in ("SmallPool", "LargePool"):
        stats[pool] = await serve.get_deployment_handle(pool, APP).stats.remote()
    return stats


async def one_request(http: httpx.AsyncClient, base: str, kind: str, problem: Any, seed: int) -> str:
    """Sends one request of ``kind``; returns "ok", "hung up" or "failed <status>"."""
    if kind.startswith("chat"):
        url, body = f"{base}/v1/chat/completions", {"model": MODEL, "messages": problem.messages(), "seed": seed}
    else:
        url, body = f"{base}/v1/completions", {"model": MODEL, "prompt": problem.question, "seed": seed}
    if not kind.endswith(("stream", "hang-up")):
        response = await http.post(url, json=body)
        return "ok" if response.status_code == 200 else f"failed {response.status_code}"
    async with http.stream("POST", url, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            return f"failed {response.status_code}"
        chunks = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                chunks += 1
                if '"error"' in line:
                    return "failed mid-stream"
                if kind == "chat-hang-up" and chunks >= HANG_UP_AFTER:
                    return "hung up"  # leaving the block closes the connection mid-stream
                if line == "data: [DONE]":
                    return "ok"
    return "failed no [DONE]"


async def soak(base: str, clients: int, seconds: float, sample_s: float) -> dict[str, Any]:
    problems = make_split("test", 500)
    outcomes: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    until = start + seconds

    async def client(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(timeout=120) as http:
            n = index
            while time.monotonic() < until:
                kind = KINDS[n % len(KINDS)]
                try:
                    outcome = await one_request(http, base, kind, problems[rng.randrange(len(problems))], n)
                except httpx.HTTPError as exc:
                    outcome = f"failed {type(exc).__name__}"
                outcomes[kind][outcome] = outcomes[kind].get(outcome, 0) + 1
                n += clients

    async def sampler() -> None:
        while time.monotonic() < until:
            rss = {name: rss_bytes(pid) for name, pid in replica_processes().items()}
            pools = await pool_stats()
            samples.append(
                {
                    "t": time.monotonic() - start,
                    "rss": rss,
                    "sessions": {p: s["sessions"] for p, s in pools.items()},
                    "cached_tokens": {p: s["cached_tokens"] for p, s in pools.items()},
                }
            )
            await asyncio.sleep(sample_s)

    await asyncio.gather(sampler(), *(client(i) for i in range(clients)))
    rest: dict[str, Any] = {}
    for _ in range(30):  # hung-up requests release their sessions once the router sees the hang-up
        pools = await pool_stats()
        rest = {p: {"sessions": s["sessions"], "cached_tokens": s["cached_tokens"]} for p, s in pools.items()}
        if all(v["sessions"] == 0 for v in rest.values()):
            break
        await asyncio.sleep(1.0)
    rest_rss = {name: rss_bytes(pid) for name, pid in replica_processes().items()}
    return {"seconds": seconds, "outcomes": outcomes, "samples": samples, "rest": rest, "rest_rss": rest_rss}


def thirds(samples: list[dict[str, Any]], seconds: float, name: str) -> list[float | None]:
    """Peak RSS (GiB) of ``name`` in each third of the run."""
    peaks: list[float | None] = []
    for k in range(3):
        lo, hi = seconds * k / 3, seconds * (k + 1) / 3
        values = [s["rss"].get(name) for s in samples if lo <= s["t"] < hi]
        known = [v for v in values if v is not None]
        peaks.append(max(known) / GIB if known else None)
    return peaks


def report(result: dict[str, Any]) -> bool:
    samples, seconds = result["samples"], result["seconds"]
    names = sorted({name for s in samples for name in s["rss"]})
    print(f"{len(samples)} samples over {seconds / 60:.1f} min")
    print("| process | RSS first (GiB) | peak 1st third | 2nd third | 3rd third | at rest | 3rd <= 2nd + 10% |")
    print("|---|---:|---:|---:|---:|---:|---|")
    held = True
    for name in names:
        first = next((s["rss"][name] for s in samples if s["rss"].get(name)), None)
        peaks = thirds(samples, seconds, name)
        rest = result["rest_rss"].get(name)
        ok = peaks[1] is not None and peaks[2] is not None and peaks[2] <= peaks[1] * 1.10
        held &= ok
        cells = [f"{v:.3f}" if v is not None else "-" for v in (first and first / GIB, *peaks, rest and rest / GIB)]
        print(f"| {name} | {' | '.join(cells)} | {'yes' if ok else 'NO'} |")
    sessions = {p: max(s["sessions"][p] for s in samples) for p in ("SmallPool", "LargePool")}
    tokens = {p: max(s["cached_tokens"][p] for s in samples) for p in ("SmallPool", "LargePool")}
    print(f"peak sessions {sessions}, peak cached KV tokens {tokens}; at rest {result['rest']}")
    failed = 0
    print("| kind | outcomes |")
    print("|---|---|")
    for kind, outcomes in result["outcomes"].items():
        failed += sum(n for outcome, n in outcomes.items() if outcome.startswith("failed"))
        print(f"| {kind} | {', '.join(f'{o}: {n}' for o, n in sorted(outcomes.items()))} |")
    total = sum(sum(o.values()) for o in result["outcomes"].values())
    at_rest = all(v["sessions"] == 0 for v in result["rest"].values())
    print(f"{total} requests, {failed} failed; sessions at rest: {'none' if at_rest else result['rest']}")
    print(f"memory held flat (every replica's 3rd-third peak <= 2nd-third peak + 10%): {'yes' if held else 'NO'}")
    return held and failed == 0 and at_rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8126)
    parser.add_argument("--out", type=Path, default=None, help="write the samples and outcomes as JSON")
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc"):
        parser.error("the soak reads replicas' memory from /proc (Linux)")

    import ray
    from ray import serve

    from deployments import serve_env
    from deployments.app import build_app

    serve_env.apply()
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app(demo_app_args()), name=APP, route_prefix="/")
        base = f"http://127.0.0.1:{args.port}"
        wait_ready(base)
        result = asyncio.run(soak(base, args.clients, args.minutes * 60, args.sample_s))
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    return 0 if report(result) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Send the demo task's problems to a running server (for traces, calibration and plans).

python benchmarks/send_requests.py --n 100 [--url http://127.0.0.1:8000] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx

from glimp_ray.demo.task import make_split, verify


async def send(url: str, model: str, n: int, concurrency: int, threshold: float | None, split: str) -> int:
    problems = make_split(split, n)
    correct = 0
    queue = list(problems)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal correct
        while queue:
            problem = queue.pop(0)
            body = {"model": model, "messages": problem.messages(), "glimp": {}}
            if threshold is not None:
                body["glimp"] = {"threshold": threshold}
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            correct += verify(response.json()["choices"][0]["message"]["content"], problem.answer)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    print(f"{n} requests in {time.perf_counter() - start:.1f} s; {correct}/{n} answers correct")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="glimp-demo")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    args = parser.parse_args(argv)
    return asyncio.run(send(args.url, args.model, args.n, args.concurrency, args.threshold, args.split))


if __name__ == "__main__":
    sys.exit(main())

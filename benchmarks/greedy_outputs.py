"""Greedy outputs of the demo pair on demo test problems, as JSON: run it before and after a
refactor and compare the files (identical output = behaviour unchanged).

    python benchmarks/greedy_outputs.py OUT.json [--problems 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from glimp_ray.collab import Collaborator
from glimp_ray.config import load_config
from glimp_ray.eval.datasets import load_dataset
from glimp_ray.local import close_collaborator, load_collaborator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--config", default="configs/demo-local.yaml")
    args = parser.parse_args()
    config = load_config(args.config)
    collab: Collaborator = load_collaborator(config)
    collab.params = collab.params.replace(temperature=0.0)
    examples = load_dataset("demo", "test", limit=args.problems).examples

    async def run_all() -> list[dict[str, object]]:
        out = []
        for example in examples:
            r = await collab.run([{"role": "user", "content": example.problem}], request_id="x")
            out.append(
                {
                    "reasoning": r.reasoning,
                    "answer": r.answer,
                    "models": [s.model for s in r.steps],
                    "entropies": [None if s.entropy is None else round(s.entropy, 4) for s in r.steps],
                    "stop": r.stop_reason,
                }
            )
        return out

    results = asyncio.run(run_all())
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"{len(results)} problems, {sum(len(r['models']) for r in results)} steps -> {args.out}")  # type: ignore[arg-type]
    close_collaborator(collab)


if __name__ == "__main__":
    main()

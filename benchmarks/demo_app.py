"""The demo pair's Serve app as the HTTP benchmarks deploy it (the benchmarks import it as a
sibling module: run them as scripts, ``python benchmarks/bench_*.py``). Each calls
``deployments.serve_env.apply()`` before it starts its cluster: Serve's throughput-optimized
mode, as the project serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL = "glimp-bench"
DEMO_TAU = 0.16  # the demo pair's τ, chosen on the validation split (docs/batch.md, "The demo models")


def demo_app_args(
    routing: dict[str, Any] | None = None, small: int = 1, large: int = 1, spans: Path | None = None
) -> dict[str, Any]:
    """The demo pair at T 0.6 with the demo task's limits; ``small``/``large`` replicas per pool,
    spans to ``spans`` (JSON lines) when given."""
    serving: dict[str, Any] = {
        "model_name": MODEL,
        "small": {"num_replicas": small, "num_cpus": 0.1},
        "large": {"num_replicas": large, "num_cpus": 0.1},
        "router": {"num_cpus": 0.1},
    }
    if spans is not None:
        serving["tracing"] = {"exporter": "jsonl", "path": str(spans)}
    return {
        "routing": routing or {"policy": "entropy", "threshold": DEMO_TAU},
        "sampling": {"temperature": 0.6, "top_p": 0.95},
        "limits": {"step_max_tokens": 64, "thinking_budget": 512, "answer_max_tokens": 32},
        "serving": serving,
    }

"""What a simulation returns: latency percentiles overall and over time, replicas, GPU-hours, cost."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    """(p50, p95, p99); NaN without latencies."""
    if not latencies:
        return (math.nan, math.nan, math.nan)
    p50, p95, p99 = np.percentile(np.asarray(latencies), [50, 95, 99])
    return (float(p50), float(p95), float(p99))


@dataclass(frozen=True)
class TimelinePoint:
    """Requests that finished in ``[start_s, end_s)`` (any arrival time) and their percentiles."""

    start_s: float
    end_s: float
    requests: int
    p50_s: float
    p95_s: float
    p99_s: float


@dataclass(frozen=True)
class SimResult:
    """p50/p95/p99 over requests arriving after the warm-up; the timeline covers all of them.

    ``replicas[pool]`` is ``[(time_s, replicas held), ...]`` at each change (starting, running
    and draining replicas: what is paid for); ``gpu_hours`` and ``cost`` are per pool over
    ``[0, duration_s]``.
    """

    p50_s: float
    p95_s: float
    p99_s: float
    requests: int  # counted in the percentiles
    arrived: int
    unfinished: int  # arrived before the end and still running when the drain limit came
    timeline: list[TimelinePoint]
    replicas: dict[str, list[tuple[float, int]]]
    gpu_hours: dict[str, float]
    cost: dict[str, float]
    duration_s: float
    tokens: dict[str, float] = field(default_factory=dict)  # tokens decoded per pool (glimpses not included)
    wall_s: float = 0.0
    mean_s: float = math.nan  # mean latency after warm-up

    @property
    def total_cost(self) -> float:
        return sum(self.cost.values())

    def mean_replicas(self, pool: str) -> float:
        """Time-weighted mean replicas held over ``[0, duration_s]``."""
        points = self.replicas[pool]
        total = 0.0
        for (t0, n), (t1, _) in zip(points, [*points[1:], (self.duration_s, 0)], strict=True):
            total += n * max(0.0, min(t1, self.duration_s) - min(t0, self.duration_s))
        return total / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_s": self.p50_s,
            "p95_s": self.p95_s,
            "p99_s": self.p99_s,
            "mean_s": self.mean_s,
            "requests": self.requests,
            "arrived": self.arrived,
            "unfinished": self.unfinished,
            "duration_s": self.duration_s,
            "gpu_hours": self.gpu_hours,
            "cost": self.cost,
            "total_cost": self.total_cost,
            "tokens": self.tokens,
            "mean_replicas": {pool: self.mean_replicas(pool) for pool in self.replicas},
            "replicas": {pool: [list(p) for p in points] for pool, points in self.replicas.items()},
            "timeline": [vars(p) for p in self.timeline],
            "wall_s": self.wall_s,
        }

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``sim.json`` and ``sim.png`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict(), indent=1, default=lambda v: None if v != v else v)
        (out / "sim.json").write_text(data.replace("NaN", "null") + "\n")
        plot(self, out / "sim.png")
        return out / "sim.json", out / "sim.png"


def plot(result: SimResult, path: str | Path) -> None:
    """Latency percentiles over time above replicas per pool (integer axis), legends outside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=[3, 2])
    mids = [(p.start_s + p.end_s) / 2 for p in result.timeline]
    for name, key, style in (("p50", "p50_s", "-"), ("p95", "p95_s", "--"), ("p99", "p99_s", ":")):
        top.plot(mids, [getattr(p, key) for p in result.timeline], style, label=f"{name} (simulated)")
    top.set_ylabel("request latency (s)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    top.set_title(
        f"simulated: p50 {result.p50_s:.2f} s, p95 {result.p95_s:.2f} s, p99 {result.p99_s:.2f} s; "
        f"cost {result.total_cost:.2f}"
    )
    for pool, points in sorted(result.replicas.items()):
        times = [t for t, _ in points] + [result.duration_s]
        counts = [n for _, n in points] + [points[-1][1]]
        bottom.step(times, counts, where="post", label=f"{pool} ({result.gpu_hours[pool]:.2f} GPU-h)")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylim(bottom=0, top=max(n for pts in result.replicas.values() for _, n in pts) + 1)
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("time (s)")
    bottom.set_xlim(0, result.duration_s)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

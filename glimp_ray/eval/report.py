"""Evaluation reports: a markdown table, JSON, and a PNG plot of accuracy against latency."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glimp_ray.eval.harness import RunSummary


def markdown_table(runs: Sequence[RunSummary]) -> str:
    lines = [
        "| policy | τ | accuracy | mean lat. (s) | p95 lat. (s) | tokens | large steps | large tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        tau = "-" if r.threshold is None else f"{r.threshold:.3f}"
        if r.random_p is not None:
            tau = f"p={r.random_p:.3f}"
        lines.append(
            f"| {r.label} | {tau} | {r.accuracy:.1%} | {r.mean_latency_s:.3f} | {r.p95_latency_s:.3f} | "
            f"{r.mean_tokens:.1f} | {r.large_step_fraction:.1%} | {r.large_token_fraction:.1%} |"
        )
    return "\n".join(lines)


def plot(runs: Sequence[RunSummary], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for r in runs:
        marker = {"small": "s", "large": "D", "random": "x"}.get(r.policy, "o")
        ax.scatter(r.mean_latency_s, 100 * r.accuracy, marker=marker, s=50)
        ax.annotate(
            r.label,
            (r.mean_latency_s, 100 * r.accuracy),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    sweep = sorted((r for r in runs if r.policy == "entropy"), key=lambda r: r.mean_latency_s)
    if len(sweep) > 1:
        ax.plot([r.mean_latency_s for r in sweep], [100 * r.accuracy for r in sweep], alpha=0.4)
    ax.set_xlabel("mean latency per request (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(out: Path, runs: Sequence[RunSummary], extra: dict[str, Any], title: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "results.md",
        "json": out / "results.json",
        "plot": out / "accuracy_latency.png",
    }
    table = markdown_table(runs)
    notes = "\n".join(f"- {k}: {v}" for k, v in extra.items())
    paths["markdown"].write_text(f"# {title}\n\n{table}\n\n{notes}\n")
    paths["json"].write_text(json.dumps({"runs": [r.to_dict() for r in runs], **extra}, indent=2))
    plot(runs, paths["plot"], title)
    return paths

"""Evaluation reports: markdown tables, JSON, and one PNG plot of accuracy against latency."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glimp_ray.eval.harness import RunSummary
from glimp_ray.eval.seeds import ArmStats, Comparison
from glimp_ray.eval.stats import Bootstrap

COLORS = {
    "entropy": "C0", "top1": "C1", "margin": "C2", "random": "C3", "small": "C7", "large": "k",
    "h_step": "C4", "ppl_step": "C5", "min_prob": "C6", "cue": "C8", "verify": "C9",
}  # fmt: skip
MARKERS = {
    "entropy": "o", "top1": "^", "margin": "v", "random": "x", "small": "s", "large": "D",
    "h_step": "P", "ppl_step": "*", "min_prob": "<", "cue": ">", "verify": "h",
}  # fmt: skip


@dataclass
class Validation:
    """The threshold selection on the validation split: each signal policy's candidates (in the
    order of ``fractions``, the small-only large fractions they were drawn at) and the chosen one."""

    small: RunSummary
    large: RunSummary
    fractions: Sequence[float]
    candidates: dict[str, list[RunSummary]] = field(default_factory=dict)
    chosen: dict[str, RunSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.small.n,
            "small": self.small.to_dict(),
            "large": self.large.to_dict(),
            "candidate_large_fractions": list(self.fractions),
            "candidates": {p: [c.to_dict() for c in cs] for p, cs in self.candidates.items()},
            "chosen_threshold": {p: c.threshold for p, c in self.chosen.items()},
        }


def _threshold(value: float | None, random_p: float | None = None) -> str:
    if random_p is not None:
        return f"p={random_p:.3f}"
    return "-" if value is None else f"{value:.4g}"


def _pm(mean_sd: tuple[float, float], percent: bool = False, digits: int = 3) -> str:
    mean, sd = mean_sd
    if percent:
        return f"{100 * mean:.1f} ± {100 * sd:.1f}%"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def format_p(p: float, resamples: int | None = None) -> str:
    """A p-value to 2 significant digits; a bootstrap's floor, 1/(resamples+1), as "≤ floor"."""
    if resamples is not None and p <= 1 / (resamples + 1) + 1e-15:
        return f"≤ {1 / (resamples + 1):.1g}"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.2g}"


def markdown_table(runs: Sequence[RunSummary]) -> str:
    """One row per run (a single seed)."""
    lines = [
        "| policy | threshold | accuracy | mean lat. (s) | p95 lat. (s) | tokens | large steps | large tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.label} | {_threshold(r.threshold, r.random_p)} | {r.accuracy:.1%} | {r.mean_latency_s:.3f} | "
            f"{r.p95_latency_s:.3f} | {r.mean_tokens:.1f} | {r.large_step_fraction:.1%} | "
            f"{r.large_token_fraction:.1%} |"
        )
    return "\n".join(lines)


def seeds_table(stats: Sequence[ArmStats]) -> str:
    """One row per arm: mean ± sample standard deviation over the seeds."""
    lines = [
        "| policy | threshold | accuracy | mean latency (s) | large steps | tokens | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        lines.append(
            f"| {s.arm.label} | {_threshold(s.arm.threshold, s.arm.random_p)} | {_pm(s.accuracy, True)} | "
            f"{_pm(s.latency)} | {_pm(s.large_fraction, True)} | {_pm(s.tokens, digits=1)} | "
            f"{sum(r.errors for r in s.per_seed)} |"
        )
    return "\n".join(lines)


def _ci(b: Bootstrap, scale: float, digits: int) -> str:
    return f"{scale * b.mean:+.{digits}f} [{scale * b.low:+.{digits}f}, {scale * b.high:+.{digits}f}]"


def comparisons_table(comparisons: Sequence[Comparison]) -> str:
    """One row per pair: differences A − B with 95% bootstrap intervals, and the p-values."""
    lines = [
        "| policy (A) | against (B) | Δ accuracy, pp [95% CI] | only A right / only B right | McNemar p | "
        "bootstrap p | Δ latency, s [95% CI] | latency p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.a} | {c.b} | {_ci(c.accuracy, 100, 1)} | {c.mcnemar.only_a} / {c.mcnemar.only_b} | "
            f"{format_p(c.mcnemar.p)} | {format_p(c.accuracy.p, c.accuracy.resamples)} | "
            f"{_ci(c.latency, 1, 3)} | {format_p(c.latency.p, c.latency.resamples)} |"
        )
    return "\n".join(lines)


def auroc_table(result: dict[str, Any]) -> str:
    hard = result.get("auroc_hard", {})
    lines = [
        "| signal (higher → large) | AUROC: the small model's step is wrong | AUROC: a hard step (task label) |",
        "|---|---|---|",
    ]
    for name, value in result["auroc"].items():
        other = f"{hard[name]:.3f}" if name in hard else "-"
        lines.append(f"| {name} | {value:.3f} | {other} |")
    return "\n".join(lines)


def validation_table(validation: Validation) -> str:
    """The candidates each threshold was chosen from, and the baselines they were judged by."""
    lines = [
        "| policy | small-only large fraction | threshold | accuracy | mean latency (s) | large steps | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (validation.small, validation.large):
        lines.append(
            f"| {r.label} | - | - | {r.accuracy:.1%} | {r.mean_latency_s:.3f} | {r.large_step_fraction:.1%} | |"
        )
    for policy, candidates in validation.candidates.items():
        for fraction, c in zip(validation.fractions, candidates, strict=True):
            chosen = "✓" if validation.chosen.get(policy) is c else ""
            lines.append(
                f"| {policy} | {fraction:.0%} | {_threshold(c.threshold)} | {c.accuracy:.1%} | "
                f"{c.mean_latency_s:.3f} | {c.large_step_fraction:.1%} | {chosen} |"
            )
    return "\n".join(lines)


def plot(path: Path, stats: Sequence[ArmStats], validation: Validation | None, title: str) -> None:
    """Left: each signal policy's threshold sweep on validation (small-only, the candidates by
    their large share, large-only); right: every arm on test, mean ± sd over the seeds. One
    legend, below both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, MultipleLocator

    panels = 2 if validation is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6), dpi=120, squeeze=False)
    handles: dict[str, Any] = {}
    if validation is not None:
        ax = axes[0][0]
        for policy, candidates in validation.candidates.items():
            # In threshold order (from all-small to all-large), not by latency: a loaded machine's
            # latencies need not be monotone in the large share.
            sweep = [validation.small, *sorted(candidates, key=lambda r: r.large_step_fraction), validation.large]
            (line,) = ax.plot(
                [r.mean_latency_s for r in sweep],
                [100 * r.accuracy for r in sweep],
                marker=MARKERS.get(policy, "o"),
                color=COLORS.get(policy),
                label=policy,
            )
            handles.setdefault(policy, line)
        for r in (validation.small, validation.large):
            handles.setdefault(
                r.policy,
                ax.scatter(r.mean_latency_s, 100 * r.accuracy, marker=MARKERS[r.policy], color=COLORS[r.policy],
                           s=60, zorder=3, label=r.policy),
            )  # fmt: skip
        ax.set_title(f"validation: threshold sweep ({validation.small.n} problems)", fontsize=10)
    ax = axes[0][-1]
    for s in stats:
        (acc, acc_sd), (lat, lat_sd) = s.accuracy, s.latency
        bars = ax.errorbar(
            lat, 100 * acc, xerr=lat_sd, yerr=100 * acc_sd, fmt=MARKERS.get(s.arm.policy, "o"),
            color=COLORS.get(s.arm.policy), capsize=3, markersize=7, label=s.arm.policy,
        )  # fmt: skip
        handles.setdefault(s.arm.policy, bars)
    n_seeds = len(stats[0].per_seed) if stats else 0
    ax.set_title(f"test: chosen thresholds, mean ± sd over {n_seeds} seeds", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("mean latency per request (s)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.yaxis.set_major_locator(MultipleLocator(20))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    columns = min(len(handles), 6)  # rows of at most six entries: the legend fits the figure's width
    rows = -(-len(handles) // columns) if handles else 1
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=columns, frameon=False)
    fig.tight_layout(rect=(0, 0.015 + 0.06 * rows, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def write_reports(
    out: Path,
    stats: Sequence[ArmStats],
    comparisons: Sequence[Comparison],
    extra: dict[str, Any],
    title: str,
    validation: Validation | None = None,
    setup: str = "",
) -> dict[str, Path]:
    """results.md (the report), results.json (everything, per seed) and accuracy_latency.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "json": out / "results.json", "plot": out / "accuracy_latency.png"}
    n_seeds = len(stats[0].per_seed) if stats else 0
    sections = [f"# {title}", setup.strip()]
    sections.append(f"## Results on the test split (mean ± standard deviation over {n_seeds} seeds)")
    sections.append(seeds_table(stats))
    if comparisons:
        sections.append("## Paired tests (same problems, same seeds)")
        sections.append(
            "Differences are A − B. McNemar's exact test counts the (problem, seed) pairs only one of "
            "the two got right; the bootstrap resamples problems (each problem's values averaged "
            "over the seeds), 95% percentile intervals, two-sided p-values."
        )
        sections.append(comparisons_table(comparisons))
    if "signal_auroc" in extra:
        result = extra["signal_auroc"]
        sections.append("## Which signal predicts the small model's wrong steps (AUROC)")
        sections.append(
            f"Teacher-forced on the gold solutions of the test problems: {result['steps']} steps, "
            f"{result['small_step_error_rate']:.1%} of them written wrong by the small model (greedy, its "
            "text differs from the gold step)."
            + (
                f" The task's own label marks {result['hard_step_fraction']:.1%} of the steps hard (multiplications)."
                if "hard_step_fraction" in result
                else ""
            )
        )
        sections.append(auroc_table(result))
    if validation is not None:
        sections.append("## Threshold selection on the validation split")
        sections.append(
            "Each signal policy's candidates are quantiles of its signal over the small-only run's "
            "steps, at the large fractions listed; the chosen one has the fewest large steps among "
            "those keeping 95% of large-only accuracy (the most accurate one if none does)."
        )
        sections.append(validation_table(validation))
    sections.append(f"![accuracy against latency]({paths['plot'].name})")
    paths["markdown"].write_text("\n\n".join(s for s in sections if s) + "\n")
    data = {
        **extra,
        "arms": [s.to_dict() for s in stats],
        "comparisons": [c.to_dict() for c in comparisons],
        "validation": validation.to_dict() if validation is not None else None,
    }
    paths["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False))
    plot(paths["plot"], stats, validation, title)
    return paths

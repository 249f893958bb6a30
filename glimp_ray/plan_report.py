"""What ``glimp-ray plan`` prints and draws: a table per plan and ``plan.png``.

Replica axes are integer; each τ of a sweep is a column labelled with its share of large
steps; legends sit above the axes, never over the data.
"""

from __future__ import annotations

from typing import Any

POOL_COLORS = {"small": "#4c8bd6", "large": "#d6744c"}


def _tau(threshold: float | None) -> str:
    return "traced" if threshold is None else f"{threshold:.3f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return "overload" if value == float("inf") else f"{value:.3f}"


def _notes(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{report['overhead_s']:.3f} s per request outside the models (the traced median)",
    ]
    if report.get("cold_requests"):
        n = report["cold_requests"]
        lines.append(f"note: the first {n} traced requests look cold (over 2× the others' median); --skip-first {n}")
    lines.append(
        "p95 confirmed by the simulator (Poisson arrivals, fixed counts)"
        if report["simulated"]
        else "p95 from the analytic model only (not simulated)"
    )
    return lines


def _extrapolated(report: dict[str, Any]) -> list[str]:
    """A note when a curve fitted from traces is used past the concurrencies the trace covered."""
    covered = report["traced_concurrency_max"]
    beyond = [
        pool
        for pool in ("small", "large")
        if report["curves"][pool]["source"] == "traces"
        and any(p[f"{pool}_concurrency"] + 1 > covered[pool] + 0.5 for p in report["plans"])
    ]
    if not beyond:
        return []
    spans = ", ".join(f"{pool} up to {covered[pool]:.1f}" for pool in beyond)
    return [
        f"note: the trace saw calls at concurrencies {spans}; the plan runs more per replica, where the "
        "fitted curve is extrapolated (a measured profile, --small-profile/--large-profile, covers it)"
    ]


def format_plan(report: dict[str, Any]) -> str:
    """The capacity plan of :func:`glimp_ray.planner.plan` as text and a Markdown table."""
    curves, target, cap = report["curves"], report["latency_target_s"], report["max_concurrency"]

    def curve(pool: str) -> str:
        c = curves[pool]
        return (
            f"{pool} {c['base_s'] * 1000:.2f} ms/token + {c['slope_s'] * 1000:.3f} ms per extra call "
            f"({'fitted from the traces' if c['source'] == 'traces' else 'profile of ' + c['source']}; "
            f"≤ {cap[pool]} calls at once; target {target[pool] * 1000:.2f} ms)"
        )

    lines = [
        f"{report['requests']} traced requests; target {report['rps']:g} requests/s"
        + (f", p95 ≤ {report['slo_p95_s']:g} s" if report["slo_p95_s"] else ""),
        f"per-token latency: {curve('small')}; {curve('large')}",
        f"glimpse {report['glimpse_model_s'] * 1000:.2f} ms of model time; traced latency mean "
        f"{report['traced_mean_latency_s']:.3f} s, p95 {report['traced_p95_latency_s']:.3f} s",
        *_notes(report),
        *_extrapolated(report),
        "",
        "| τ | large steps | large tokens | small tokens/req | large tokens/req | small replicas | large replicas "
        "| calls/replica (small, large) | p95 model (s) | p95 simulated (s) | one fewer small, large (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["plans"]:
        fewer = p["one_fewer_p95_s"]
        fewer_text = ", ".join(_seconds(fewer[k]) for k in ("small", "large")) if fewer else "-"
        lines.append(
            f"| {_tau(p['threshold'])} | {p['large_step_fraction']:.1%} | {p['large_token_fraction']:.1%} | "
            f"{p['small_tokens']:.1f} | {p['large_tokens']:.1f} | {p['small_replicas']} | {p['large_replicas']} | "
            f"{p['small_concurrency']:.1f}, {p['large_concurrency']:.1f} | {_seconds(p['predicted_p95_s'])} | "
            f"{_seconds(p['simulated_p95_s'])} | {fewer_text} |"
        )
    return "\n".join(lines)


def _pool_text(pool: dict[str, Any]) -> str:
    tp = pool["tensor_parallel"]
    return f"{pool['replicas']} × {pool['gpu']}" + (f" (TP {tp}, {pool['gpus']} GPUs)" if tp > 1 else "")


def format_placements(report: dict[str, Any]) -> str:
    """The placement report of :func:`glimp_ray.placement.plan_placements` as text and tables."""
    price_note = " (PLACEHOLDER prices: put your own in the gpus file)" if report["placeholder_prices"] else ""
    lines = [
        f"{report['requests']} traced requests; target {report['rps']:g} requests/s, p95 ≤ {report['slo_p95_s']:g} s"
        f"{price_note}",
        *_notes(report),
        "",
        "| pool | GPU | Ray accelerator_type | TP | $/GPU-hour | ms/token alone | full contexts in KV |",
        "|---|---|---|---|---|---|---|",
    ]
    for pool, options in report["options"].items():
        for o in options:
            lines.append(
                f"| {pool} | {o['gpu']} | {o['accelerator_type']} | {o['tensor_parallel']} | "
                f"{o['price_per_gpu_hour']:.2f} | {o['decode_ms_per_token_alone']:.2f} | {o['kv_contexts']:.1f} |"
            )
    large_only = report["large_only"]
    only_text = "none meets the objective"
    if large_only:
        only_text = (
            f"{_pool_text(large_only['large'])}: ${large_only['cost_per_hour']:.2f}/h, "
            f"p95 {_seconds(large_only['simulated_p95_s'] or large_only['analytic_p95_s'])} s"
        )
    lines += [
        "",
        f"large-only (every step and the answer on the large model): {only_text}",
        "",
        "| τ | large steps | small pool | large pool | $/hour | p95 model (s) | p95 simulated (s) "
        "| one fewer small, large (s) | saving vs large-only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["plans"]:
        best = p["best"]
        if best is None:
            lines.append(f"| {_tau(p['threshold'])} | {p['large_step_fraction']:.1%} | no placement meets it |||||||")
            continue
        fewer = best["one_fewer_p95_s"]
        fewer_text = ", ".join(_seconds(fewer[k]) for k in ("small", "large")) if fewer else "-"
        saving = "-" if p["saving"] is None else f"{p['saving']:.0%}"
        lines.append(
            f"| {_tau(p['threshold'])} | {p['large_step_fraction']:.1%} | {_pool_text(best['small'])} | "
            f"{_pool_text(best['large'])} | {best['cost_per_hour']:.2f} | {_seconds(best['analytic_p95_s'])} | "
            f"{_seconds(best['simulated_p95_s'])} | {fewer_text} | {saving} |"
        )
    first = report["plans"][0]["candidates"][:5]
    if first:
        lines += ["", "cheapest placements by the analytic model (traced routing):", ""]
        lines += ["| small pool | large pool | $/hour | p95 model (s) |", "|---|---|---|---|"]
        for c in first:
            lines.append(
                f"| {_pool_text(c['small'])} | {_pool_text(c['large'])} | {c['cost_per_hour']:.2f} | "
                f"{_seconds(c['analytic_p95_s'])} |"
            )
    return "\n".join(lines)


def _columns(plans: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Plans in τ order (the traced routing first) and their axis labels (with the GPU types)."""
    ordered = sorted(plans, key=lambda p: (p["threshold"] is not None, p["threshold"] or 0.0))
    labels = []
    for p in ordered:
        label = "traced" if p["threshold"] is None else f"τ {p['threshold']:g}"
        label += f"\n{p['large_step_fraction']:.0%} large"
        if p.get("best"):
            label += f"\n{p['best']['small']['gpu']}\n+ {p['best']['large']['gpu']}"
        labels.append(label)
    return ordered, labels


def plot_plan(report: dict[str, Any], path: str) -> None:
    """plan.png: replicas per pool and p95 for each τ (trace mode) or the cheapest placement's
    replicas and $/hour against large-only (with a gpus file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    placements = "large_only" in report
    plans, labels = _columns(report["plans"])
    x = list(range(len(plans)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10.0, 2.4 * len(plans)), 4.6), dpi=120)
    width = 0.38
    for shift, pool in ((-width / 2, "small"), (width / 2, "large")):
        if placements:
            counts = [p["best"][pool]["replicas"] if p["best"] else 0 for p in plans]
        else:
            counts = [p[f"{pool}_replicas"] for p in plans]
        bars = left.bar([i + shift for i in x], counts, width, color=POOL_COLORS[pool], label=f"{pool} pool")
        left.bar_label(bars, fontsize=8)
    left.set_ylabel(f"replicas for {report['rps']:g} requests/s")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylim(0, max(1, *(b.get_height() for b in left.patches)) * 1.25)
    left.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    if placements:
        costs = [p["best"]["cost_per_hour"] if p["best"] else float("nan") for p in plans]
        right.plot(x, costs, "o-", color="#2a9d5c", label="cheapest placement")
        if report["large_only"]:
            only = report["large_only"]["large"]
            right.axhline(
                report["large_only"]["cost_per_hour"],
                color="gray",
                ls="--",
                label=f"large-only ({only['replicas']} × {only['gpu']})",
            )
        for i, p in enumerate(plans):
            if p["saving"] is not None:
                right.annotate(
                    f"−{p['saving']:.0%}",
                    (i, costs[i]),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
        prices = " (placeholder prices)" if report["placeholder_prices"] else ""
        right.set_ylabel(f"$ per hour{prices}")
        right.set_ylim(
            0,
            max([c for c in costs if c == c] + [report["large_only"]["cost_per_hour"] if report["large_only"] else 0])
            * 1.2,
        )
    else:
        model = [p["predicted_p95_s"] for p in plans]
        right.plot(x, model, "o-", color="#555555", label="p95, model")
        if report["simulated"]:
            right.plot(x, [p["simulated_p95_s"] for p in plans], "s-", color="#2a9d5c", label="p95, simulated")
        if report["slo_p95_s"]:
            right.axhline(report["slo_p95_s"], color="#c0392b", ls="--", label="objective")
        right.set_ylabel("p95 latency (s)")
        finite = [v for p in plans for v in (p["predicted_p95_s"], p["simulated_p95_s"]) if v is not None and v < 1e300]
        right.set_ylim(0, max(finite + [report["slo_p95_s"] or 0.0, 1e-3]) * 1.15)
    right.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    for ax in (left, right):
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlim(-0.6, len(plans) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    slo = f", p95 ≤ {report['slo_p95_s']:g} s" if report["slo_p95_s"] else ""
    fig.suptitle(f"{report['rps']:g} requests/s{slo}", y=0.99)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

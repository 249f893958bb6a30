"""Threshold calibration and capacity planning from traced routing decisions.

Both read the traced requests of :mod:`glimp_ray.traces`. A step carries its route, glimpse
entropy, tokens, model seconds and the concurrency its replica ran it at; re-routing the traced
entropies at another τ predicts the routing ratio and the work each pool would see (what-if).

Capacity model (:mod:`glimp_ray.capacity`, shared with the autoscaler): a replica batches, so its
per-token latency is ``ℓ(b)`` at ``b`` concurrent calls, fitted per pool from the traced calls
(concurrency, model seconds per token). A pool at ``rps`` generates ``demand`` tokens/s (its
steps' and answers' tokens, and one token per glimpse on the small pool) and gets
``demand × ℓ(b*) / b*`` replicas, ``b*`` being the most calls per replica within
``max_concurrency`` that keep ``ℓ`` under the latency target. Its replicas then run ``b`` calls
each on average (calls arriving at random: ``b = x × ℓ(1 + b)`` for ``x`` tokens/s per replica);
every traced call's model time is rescaled by ``ℓ(1 + b) / ℓ(b_traced)`` and the rest of each
request's latency (router, Ray calls) is kept, which gives the predicted latencies and their
p95. Batched calls are never summed as if serial, and a glimpse costs its model time, not the
router's wall clock.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from glimp_ray.capacity import BatchingCurve, Observation, replicas_for
from glimp_ray.eval.metrics import percentile, quantile_threshold
from glimp_ray.policies import routes_large
from glimp_ray.traces import TracedCall, TracedRequest, entropies, observed_large_fraction, requests_from_spans

__all__ = ["calibrate", "format_plan", "plan", "plot_plan", "requests_from_spans"]


def calibrate(
    requests: Sequence[TracedRequest],
    target_large_fraction: float,
    validation: Sequence[TracedRequest] | None = None,
) -> dict[str, Any]:
    """τ as the quantile of traced glimpse entropies that sends the target fraction large."""
    values = entropies(requests)
    if not values:
        raise ValueError("the trace has no glimpse entropies (was it recorded under the large-only policy?)")
    tau = quantile_threshold(values, target_large_fraction)
    report: dict[str, Any] = {
        "threshold": tau,
        "target_large_fraction": target_large_fraction,
        "predicted_large_fraction": sum(routes_large(e, tau) for e in values) / len(values),
        "steps": len(values),
    }
    if validation is not None:
        held_out = entropies(validation)
        report["validation"] = {
            "steps": len(held_out),
            "large_fraction_at_threshold": sum(routes_large(e, tau) for e in held_out) / len(held_out)
            if held_out
            else None,
            "observed_large_fraction": observed_large_fraction(validation),
        }
    return report


POOLS = ("small", "large")


def fit_curves(requests: Sequence[TracedRequest]) -> dict[str, BatchingCurve]:
    """Each pool's batching curve from its traced calls; a pool never traced borrows the other's."""
    points: dict[str, list[Observation]] = {pool: [] for pool in POOLS}
    for r in requests:
        for call in r.calls:
            if call.tokens > 0 and call.model_s > 0 and call.route in points:
                points[call.route].append(Observation(call.concurrency, call.model_s / call.tokens, call.tokens))
    curves = {pool: BatchingCurve.fit(points[pool]) for pool in POOLS}
    if curves["small"] is None and curves["large"] is None:
        raise ValueError("the trace has no generated tokens")
    return {pool: curves[pool] or curves["large" if pool == "small" else "small"] for pool in POOLS}  # type: ignore[misc]


@dataclass(frozen=True)
class Routed:
    """A traced call as it runs at a what-if τ: its pool, and the glimpse it needs on the small pool."""

    call: TracedCall
    route: str
    glimpse_model_s: float  # 0 when it has no glimpse (a small step, or an answer)
    glimpse_concurrency: float  # the concurrency the glimpse's traced model time was measured at


def reroute(requests: Sequence[TracedRequest], threshold: float | None) -> list[list[Routed]]:
    """Every request's calls at τ (``None``: as traced). A step moved to the large pool gets the
    trace's mean glimpse; one moved to the small pool loses its glimpse."""
    glimpses = [s.glimpse_model_s for r in requests for s in r.steps if s.glimpse_model_s > 0]
    mean_glimpse = sum(glimpses) / len(glimpses) if glimpses else 0.0
    routed = []
    for r in requests:
        calls = []
        for s in r.steps:
            route = s.route
            if threshold is not None and s.entropy is not None:
                route = "large" if routes_large(s.entropy, threshold) else "small"
            glimpse = 0.0
            if route == "large" and s.entropy is not None:
                glimpse = s.glimpse_model_s if s.route == "large" and s.glimpse_model_s > 0 else mean_glimpse
            # A glimpse's own concurrency on the small pool is not traced: taken as a lone call's.
            calls.append(Routed(s, route, glimpse, 1.0))
        calls.append(Routed(r.answer, r.answer.route, 0.0, 1.0))
        routed.append(calls)
    return routed


def pool_demand(routed: Sequence[Sequence[Routed]]) -> dict[str, float]:
    """Tokens per request each pool generates (a glimpse counts one token on the small pool)."""
    tokens = dict.fromkeys(POOLS, 0.0)
    for calls in routed:
        for c in calls:
            tokens[c.route] += c.call.tokens
            tokens["small"] += 1.0 if c.glimpse_model_s > 0 else 0.0
    return {pool: tokens[pool] / len(routed) for pool in POOLS}


def predicted_latencies(
    requests: Sequence[TracedRequest],
    routed: Sequence[Sequence[Routed]],
    curves: dict[str, BatchingCurve],
    concurrency: dict[str, float],
) -> list[float]:
    """Each request's latency with its calls' model time rescaled to the pools' concurrency."""
    latencies = []
    for r, calls in zip(requests, routed, strict=True):
        traced_model_s = sum(c.model_s + c.glimpse_model_s for c in r.calls)
        overhead = max(r.latency_s - traced_model_s, 0.0)
        model_s = 0.0
        for c in calls:
            pool, call = c.route, c.call
            at = curves[pool].latency_seen(concurrency[pool])
            if pool == call.route and call.model_s > 0:
                model_s += call.model_s * at / curves[pool].latency(call.concurrency)
            else:
                model_s += call.tokens * at
            if c.glimpse_model_s > 0:
                small_at = curves["small"].latency_seen(concurrency["small"])
                model_s += c.glimpse_model_s * small_at / curves["small"].latency(c.glimpse_concurrency)
        latencies.append(overhead + model_s)
    return latencies


def predict(
    requests: Sequence[TracedRequest],
    routed: Sequence[Sequence[Routed]],
    curves: dict[str, BatchingCurve],
    demand: dict[str, float],
    replicas: dict[str, int],
    max_concurrency: int,
) -> tuple[dict[str, float], float]:
    """Calls per replica in each pool and the p95 latency, for ``demand`` tokens/s on ``replicas``."""
    concurrency = {p: curves[p].concurrency_at(demand[p], replicas[p]) for p in POOLS}
    if any(concurrency[p] > max_concurrency for p in POOLS):
        return concurrency, math.inf
    return concurrency, percentile(predicted_latencies(requests, routed, curves, concurrency), 95)


@dataclass
class CapacityPlan:
    threshold: float | None
    large_step_fraction: float
    large_token_fraction: float
    small_tokens: float  # tokens per request on the small pool (glimpses included)
    large_tokens: float
    small_replicas: int
    large_replicas: int
    small_concurrency: float  # calls each replica runs at this load
    large_concurrency: float
    small_utilization: float  # that concurrency over max_concurrency (share of batch slots in use)
    large_utilization: float
    predicted_p95_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_pools(
    rps: float,
    tokens: dict[str, float],
    curves: dict[str, BatchingCurve],
    max_concurrency: int,
    latency_target: dict[str, float],
) -> dict[str, int]:
    """Replicas per pool: each runs at most the concurrency that meets its per-token latency target."""
    replicas = {}
    for pool in POOLS:
        demand = rps * tokens[pool]
        target = curves[pool].target_concurrency(latency_target[pool], max_concurrency)
        replicas[pool] = max(1, math.ceil(replicas_for(demand, curves[pool], target) - 1e-6)) if demand else 1
    return replicas


def plan(
    requests: Sequence[TracedRequest],
    rps: float,
    thresholds: Sequence[float] = (),
    slo_p95_s: float | None = None,
    latency_slack: float = 2.0,
    max_concurrency: int = 32,
    latency_target_s: float | None = None,
    max_replicas: int = 10_000,
) -> dict[str, Any]:
    """The traced routing and capacity, and the same for each what-if τ.

    ``latency_target_s``: seconds per token a call may see (default ``latency_slack`` × a lone
    call's); ``max_concurrency``: calls a replica runs at once (``max_running`` /
    ``max_num_seqs``); ``slo_p95_s`` adds replicas until the predicted p95 meets it.
    """
    if rps <= 0:
        raise ValueError(f"rps must be > 0, got {rps}")
    if latency_slack < 1:
        raise ValueError(f"latency_slack must be >= 1, got {latency_slack}")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    curves = fit_curves(requests)
    target = {
        pool: latency_target_s if latency_target_s is not None else latency_slack * curves[pool].base_s
        for pool in POOLS
    }
    latencies = [r.latency_s for r in requests]
    plans = []
    for threshold in [None, *thresholds]:
        routed = reroute(requests, threshold)
        tokens = pool_demand(routed)
        replicas = size_pools(rps, tokens, curves, max_concurrency, target)

        demand = {p: rps * tokens[p] for p in POOLS}
        evaluate = functools.partial(predict, requests, routed, curves, demand, max_concurrency=max_concurrency)

        concurrency, p95 = evaluate(replicas)
        while slo_p95_s is not None and p95 > slo_p95_s:
            options = []
            for pool in POOLS:
                more = {**replicas, pool: replicas[pool] + 1}
                options.append((evaluate(more)[1], pool))
            best_p95, best = min(options)
            if best_p95 >= p95 or replicas[best] >= max_replicas:
                raise ValueError(
                    f"the p95 objective {slo_p95_s} s is below what more replicas reach ({p95:.3f} s: "
                    "the latency outside the models, or a lone call's)"
                )
            replicas[best] += 1
            concurrency, p95 = evaluate(replicas)
        steps = [c for calls in routed for c in calls[:-1]]
        large_steps = sum(c.route == "large" for c in steps)
        step_tokens = {p: sum(c.call.tokens for calls in routed for c in calls if c.route == p) for p in POOLS}
        total = step_tokens["small"] + step_tokens["large"]
        plans.append(
            CapacityPlan(
                threshold=threshold,
                large_step_fraction=large_steps / len(steps) if steps else 0.0,
                large_token_fraction=step_tokens["large"] / total if total else 0.0,
                small_tokens=tokens["small"],
                large_tokens=tokens["large"],
                small_replicas=replicas["small"],
                large_replicas=replicas["large"],
                small_concurrency=concurrency["small"],
                large_concurrency=concurrency["large"],
                small_utilization=concurrency["small"] / max_concurrency,
                large_utilization=concurrency["large"] / max_concurrency,
                predicted_p95_s=p95,
            )
        )
    glimpses = [s.glimpse_model_s for r in requests for s in r.steps if s.glimpse_model_s > 0]
    return {
        "requests": len(requests),
        "rps": rps,
        "max_concurrency": max_concurrency,
        "latency_target_s": target,
        "slo_p95_s": slo_p95_s,
        "traced_mean_latency_s": sum(latencies) / len(latencies),
        "traced_p95_latency_s": percentile(latencies, 95),
        "curves": {p: {"base_s": curves[p].base_s, "slope_s": curves[p].slope_s} for p in POOLS},
        "glimpse_model_s": sum(glimpses) / len(glimpses) if glimpses else 0.0,
        "plans": [p.to_dict() for p in plans],
    }


def format_plan(report: dict[str, Any]) -> str:
    curves, target = report["curves"], report["latency_target_s"]

    def curve(pool: str) -> str:
        c = curves[pool]
        return (
            f"{pool} {c['base_s'] * 1000:.2f} ms/token + {c['slope_s'] * 1000:.3f} ms per extra call "
            f"(target {target[pool] * 1000:.2f} ms)"
        )

    lines = [
        f"{report['requests']} traced requests; target {report['rps']:g} requests/s, at most "
        f"{report['max_concurrency']} calls per replica"
        + (f", p95 ≤ {report['slo_p95_s']:g} s" if report["slo_p95_s"] else ""),
        f"per-token latency: {curve('small')}; {curve('large')}",
        f"glimpse {report['glimpse_model_s'] * 1000:.2f} ms of model time; traced latency mean "
        f"{report['traced_mean_latency_s']:.3f} s, p95 {report['traced_p95_latency_s']:.3f} s",
        "",
        "| τ | large steps | large tokens | small tokens/req | large tokens/req | small replicas | large replicas "
        "| calls/replica (small, large) | p95 (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["plans"]:
        tau = "traced" if p["threshold"] is None else f"{p['threshold']:.3f}"
        lines.append(
            f"| {tau} | {p['large_step_fraction']:.1%} | {p['large_token_fraction']:.1%} | {p['small_tokens']:.1f} | "
            f"{p['large_tokens']:.1f} | {p['small_replicas']} | {p['large_replicas']} | "
            f"{p['small_concurrency']:.1f}, {p['large_concurrency']:.1f} | {p['predicted_p95_s']:.3f} |"
        )
    return "\n".join(lines)


def plot_plan(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plans = sorted((p for p in report["plans"] if p["threshold"] is not None), key=lambda p: p["threshold"])
    if not plans:
        plans = report["plans"]
    taus = [p["threshold"] if p["threshold"] is not None else 0.0 for p in plans]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(taus, [p["small_replicas"] for p in plans], "o-", label="small replicas")
    ax.plot(taus, [p["large_replicas"] for p in plans], "s-", label="large replicas")
    ax.set_xlabel("threshold τ (nats)")
    ax.set_ylabel(f"replicas for {report['rps']:g} requests/s")
    twin = ax.twinx()
    twin.plot(taus, [100 * p["large_step_fraction"] for p in plans], "x--", color="gray", label="large steps (%)")
    twin.set_ylabel("large-step fraction (%)")
    fig.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

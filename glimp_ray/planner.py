"""Threshold calibration and capacity planning from traced routing decisions.

Both read the JSON-lines spans written by :mod:`glimp_ray.tracing`. A step span carries
its route, glimpse entropy, tokens and model seconds; re-routing the traced entropies at
another τ predicts the routing ratio and the work each pool would see (what-if).

Capacity model: a replica serves one second of model time per second; it runs at most at
``target_utilization``. With ``slo_p95`` the replicas also keep the predicted p95 latency,
``traced p95 × 1 / (1 - ρ)`` for the busiest pool's utilization ρ (an M/M/1-style
inflation), under the objective.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from glimp_ray.eval.metrics import percentile, quantile_threshold
from glimp_ray.policies import routes_large
from glimp_ray.tracing import SPAN_ANSWER, SPAN_REQUEST, SPAN_STEP


@dataclass(frozen=True)
class TracedStep:
    route: str
    entropy: float | None
    tokens: int
    model_s: float
    glimpse_s: float


@dataclass(frozen=True)
class TracedRequest:
    trace_id: str
    steps: tuple[TracedStep, ...]
    answer_route: str
    answer_tokens: int
    answer_model_s: float
    latency_s: float


def requests_from_spans(spans: Sequence[dict[str, Any]]) -> list[TracedRequest]:
    """Group step and answer spans under their request span."""
    steps: dict[str, list[tuple[int, TracedStep]]] = defaultdict(list)
    answers: dict[str, dict[str, Any]] = {}
    roots: dict[str, dict[str, Any]] = {}
    for span in spans:
        attributes = span.get("attributes", {})
        parent = span.get("parent_span_id")
        if span["name"] == SPAN_REQUEST:
            roots[span["span_id"]] = span
        elif span["name"] == SPAN_STEP and parent:
            step = TracedStep(
                route=attributes["glimp.route"],
                entropy=attributes.get("glimp.entropy"),
                tokens=int(attributes.get("glimp.tokens.generated", 0)),
                model_s=float(attributes.get("glimp.model_s", 0.0)),
                glimpse_s=float(attributes.get("glimp.glimpse_s", 0.0)),
            )
            steps[parent].append((int(attributes.get("glimp.step.index", 0)), step))
        elif span["name"] == SPAN_ANSWER and parent:
            answers[parent] = attributes
    requests = []
    for span_id, root in roots.items():
        if span_id not in answers:
            continue  # failed or abandoned: no answer, no latency to learn from
        answer = answers[span_id]
        requests.append(
            TracedRequest(
                trace_id=root.get("trace_id", span_id),
                steps=tuple(step for _, step in sorted(steps.get(span_id, []), key=lambda p: p[0])),
                answer_route=answer.get("glimp.route", "large"),
                answer_tokens=int(answer.get("glimp.tokens.generated", 0)),
                answer_model_s=float(answer.get("glimp.model_s", 0.0)),
                latency_s=float(root.get("attributes", {}).get("glimp.latency_s", 0.0)),
            )
        )
    if not requests:
        raise ValueError("no finished glimp.request spans in the trace")
    return requests


def entropies(requests: Sequence[TracedRequest]) -> list[float]:
    return [s.entropy for r in requests for s in r.steps if s.entropy is not None]


def observed_large_fraction(requests: Sequence[TracedRequest]) -> float:
    steps = [s for r in requests for s in r.steps]
    return sum(s.route == "large" for s in steps) / len(steps) if steps else 0.0


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


@dataclass(frozen=True)
class PoolRates:
    """Measured from the trace: model seconds per generated token, and per glimpse."""

    small_s_per_token: float
    large_s_per_token: float
    glimpse_s: float


def measure_rates(requests: Sequence[TracedRequest]) -> PoolRates:
    tokens = {"small": 0, "large": 0}
    seconds = {"small": 0.0, "large": 0.0}
    glimpses = []
    for r in requests:
        for s in r.steps:
            tokens[s.route] += s.tokens
            seconds[s.route] += s.model_s
            if s.route == "large" and s.glimpse_s > 0:
                glimpses.append(s.glimpse_s)
        tokens[r.answer_route] += r.answer_tokens
        seconds[r.answer_route] += r.answer_model_s
    rate = {p: seconds[p] / tokens[p] if tokens[p] else math.nan for p in tokens}
    if math.isnan(rate["small"]) and math.isnan(rate["large"]):
        raise ValueError("the trace has no generated tokens")
    # A pool never seen in the trace borrows the other's rate.
    rate = {p: rate[p] if not math.isnan(rate[p]) else rate["large" if p == "small" else "small"] for p in rate}
    return PoolRates(rate["small"], rate["large"], sum(glimpses) / len(glimpses) if glimpses else 0.0)


@dataclass
class CapacityPlan:
    threshold: float | None
    large_step_fraction: float
    large_token_fraction: float
    small_work_s: float  # model seconds per request on the small pool
    large_work_s: float
    small_replicas: int
    large_replicas: int
    small_utilization: float
    large_utilization: float
    predicted_p95_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def demand(requests: Sequence[TracedRequest], rates: PoolRates, threshold: float | None) -> dict[str, float]:
    """Per-request model seconds and token counts per pool, as traced (``None``) or re-routed at τ."""
    work = {"small": 0.0, "large": 0.0}
    tokens = {"small": 0, "large": 0}
    steps = large_steps = 0
    for r in requests:
        for s in r.steps:
            if threshold is None or s.entropy is None:
                route = s.route
            else:
                route = "large" if routes_large(s.entropy, threshold) else "small"
            per_token = rates.small_s_per_token if route == "small" else rates.large_s_per_token
            work[route] += s.tokens * per_token
            tokens[route] += s.tokens
            if route == "large" and (threshold is not None or s.glimpse_s > 0):
                work["small"] += rates.glimpse_s  # the glimpse that sent it large
            steps += 1
            large_steps += route == "large"
        per_token = rates.small_s_per_token if r.answer_route == "small" else rates.large_s_per_token
        work[r.answer_route] += r.answer_tokens * per_token
        tokens[r.answer_route] += r.answer_tokens
    n = len(requests)
    total_tokens = tokens["small"] + tokens["large"]
    return {
        "small_work_s": work["small"] / n,
        "large_work_s": work["large"] / n,
        "large_step_fraction": large_steps / steps if steps else 0.0,
        "large_token_fraction": tokens["large"] / total_tokens if total_tokens else 0.0,
    }


def size_pools(
    rps: float,
    small_work_s: float,
    large_work_s: float,
    base_p95_s: float,
    target_utilization: float = 0.7,
    slo_p95_s: float | None = None,
    max_replicas: int = 10_000,
) -> tuple[int, int, float]:
    """Replicas per pool for ``rps`` requests/s; returns (small, large, predicted p95)."""
    if rps <= 0:
        raise ValueError(f"rps must be > 0, got {rps}")
    if not 0 < target_utilization < 1:
        raise ValueError(f"target utilization must be in (0, 1), got {target_utilization}")
    load = {"small": rps * small_work_s, "large": rps * large_work_s}  # busy replicas needed
    replicas = {p: max(1, math.ceil(load[p] / target_utilization - 1e-9)) for p in load}

    def p95() -> float:
        rho = max(load[p] / replicas[p] for p in load)
        return base_p95_s / (1 - rho)

    while slo_p95_s is not None and p95() > slo_p95_s:
        busiest = max(load, key=lambda p: load[p] / replicas[p])
        replicas[busiest] += 1
        if replicas[busiest] > max_replicas:
            raise ValueError(f"the p95 objective {slo_p95_s} s is below the unloaded p95 {base_p95_s:.3f} s")
    return replicas["small"], replicas["large"], p95()


def plan(
    requests: Sequence[TracedRequest],
    rps: float,
    thresholds: Sequence[float] = (),
    slo_p95_s: float | None = None,
    target_utilization: float = 0.7,
) -> dict[str, Any]:
    """The traced routing and capacity, and the same for each what-if τ."""
    rates = measure_rates(requests)
    latencies = [r.latency_s for r in requests]
    traced_p95 = percentile(latencies, 95)
    traced_mean = sum(latencies) / len(latencies)
    traced = demand(requests, rates, None)
    plans = []
    for threshold in [None, *thresholds]:
        d = traced if threshold is None else demand(requests, rates, threshold)
        # Unloaded latency scales with the model time a request needs at this τ.
        traced_work = traced["small_work_s"] + traced["large_work_s"]
        scale = (d["small_work_s"] + d["large_work_s"]) / traced_work if traced_work else 1.0
        small, large, p95 = size_pools(
            rps, d["small_work_s"], d["large_work_s"], traced_p95 * scale, target_utilization, slo_p95_s
        )
        plans.append(
            CapacityPlan(
                threshold=threshold,
                large_step_fraction=d["large_step_fraction"],
                large_token_fraction=d["large_token_fraction"],
                small_work_s=d["small_work_s"],
                large_work_s=d["large_work_s"],
                small_replicas=small,
                large_replicas=large,
                small_utilization=rps * d["small_work_s"] / small,
                large_utilization=rps * d["large_work_s"] / large,
                predicted_p95_s=p95,
            )
        )
    return {
        "requests": len(requests),
        "rps": rps,
        "target_utilization": target_utilization,
        "slo_p95_s": slo_p95_s,
        "traced_mean_latency_s": traced_mean,
        "traced_p95_latency_s": traced_p95,
        "service_rate_tokens_per_s": {
            "small": 1 / rates.small_s_per_token if rates.small_s_per_token else math.inf,
            "large": 1 / rates.large_s_per_token if rates.large_s_per_token else math.inf,
        },
        "glimpse_s": rates.glimpse_s,
        "plans": [p.to_dict() for p in plans],
    }


def format_plan(report: dict[str, Any]) -> str:
    rates = report["service_rate_tokens_per_s"]
    lines = [
        f"{report['requests']} traced requests; target {report['rps']:g} requests/s at utilization "
        f"≤ {report['target_utilization']:.0%}" + (f", p95 ≤ {report['slo_p95_s']:g} s" if report["slo_p95_s"] else ""),
        f"service rate: small {rates['small']:.1f} tokens/s, large {rates['large']:.1f} tokens/s per replica; "
        f"glimpse {report['glimpse_s'] * 1000:.2f} ms; traced latency mean {report['traced_mean_latency_s']:.3f} s, "
        f"p95 {report['traced_p95_latency_s']:.3f} s",
        "",
        "| τ | large steps | large tokens | small s/req | large s/req | small replicas | large replicas | p95 (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in report["plans"]:
        tau = "traced" if p["threshold"] is None else f"{p['threshold']:.3f}"
        lines.append(
            f"| {tau} | {p['large_step_fraction']:.1%} | {p['large_token_fraction']:.1%} | {p['small_work_s']:.4f} | "
            f"{p['large_work_s']:.4f} | {p['small_replicas']} | {p['large_replicas']} | {p['predicted_p95_s']:.3f} |"
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

"""Threshold calibration and capacity planning from traced routing decisions.

Both read the traced requests of :mod:`glimp_ray.traces`. A step carries its route, glimpse
entropy, tokens, model seconds and the concurrency its replica ran it at; re-routing the traced
entropies at another τ predicts the routing ratio and the work each pool would see (what-if).

:func:`plan` sizes the two pools for a load. Each pool's replica is an engine profile
(``profiles``, e.g. ``glimp-ray profile``'s), or, without one, the batching curve fitted from the
traced calls (:mod:`glimp_ray.plan_model`). With a p95 objective it finds the fewest replicas
the analytic model says meet it (:func:`glimp_ray.plan_search.cheapest`), then has the
simulator confirm them: the simulated p95 meets the objective at the planned counts and misses
it with one replica fewer in either pool (:func:`glimp_ray.plan_search.confirm`). Without one,
each pool gets the fewest replicas at which a call arriving at random sees a per-token latency
within ``latency_slack`` × a lone call's, as the autoscaler sizes (:func:`size_pools`). GPU
types and prices: :mod:`glimp_ray.placement`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from glimp_ray.capacity import replicas_for
from glimp_ray.eval.metrics import percentile, signal_threshold
from glimp_ray.plan_model import (
    POOLS,
    Analytic,
    PoolModel,
    Workload,
    fit_curves,
    mean_glimpse_s,
    router_overhead_s,
    traced_profile,
)
from glimp_ray.plan_report import format_plan, plot_plan
from glimp_ray.plan_search import P95, cheapest, confirm
from glimp_ray.policies import POST_STEP_POLICIES, routes_large, step_rewrites
from glimp_ray.profile import EngineProfile
from glimp_ray.traces import TracedRequest, observed_large_fraction, requests_from_spans, signal_values

# The policies whose τ calibrate takes from a trace.
CALIBRATED = ("entropy", "top1", "margin", "h_step", "ppl_step", "min_prob", "verify")

__all__ = ["calibrate", "cold_requests", "format_plan", "plan", "plot_plan", "requests_from_spans", "skip_first"]

# Builds the confirming evaluator (the simulator) for a workload on pools; None: analytic only.
Confirmer = Callable[[Workload, Mapping[str, PoolModel]], P95]


def calibrate(
    requests: Sequence[TracedRequest],
    target_large_fraction: float,
    validation: Sequence[TracedRequest] | None = None,
    policy: str = "entropy",
) -> dict[str, Any]:
    """τ as the quantile of a policy's traced signal (the glimpse entropy by default) that sends
    the target fraction of steps large: above τ for entropy, h_step and ppl_step, below it for
    top1, margin, min_prob and verify."""
    if policy not in CALIBRATED:
        raise ValueError(f"calibrate chooses τ for {', '.join(CALIBRATED)}, not {policy!r}")
    values = signal_values(requests, policy)
    if not values and policy == "entropy":
        raise ValueError("the trace has no glimpse entropies (was it recorded under the large-only policy?)")
    if not values:
        raise ValueError(
            f"the trace has no {policy} values (h_step, ppl_step, min_prob: record under a post-step policy or "
            "one of them as a shadow; verify: under verify; top1, margin: from a pool that gives them)"
        )
    tau = signal_threshold(values, target_large_fraction, policy)

    def large_share(xs: Sequence[float]) -> float:
        if policy == "entropy":
            return sum(routes_large(x, tau) for x in xs) / len(xs)
        return sum(step_rewrites(policy, x, tau) if policy in POST_STEP_POLICIES else x < tau for x in xs) / len(xs)

    report: dict[str, Any] = {
        "policy": policy,
        "threshold": tau,
        "target_large_fraction": target_large_fraction,
        "predicted_large_fraction": large_share(values),
        "steps": len(values),
    }
    if validation is not None:
        held_out = signal_values(validation, policy)
        report["validation"] = {
            "steps": len(held_out),
            "large_fraction_at_threshold": large_share(held_out) if held_out else None,
            "observed_large_fraction": observed_large_fraction(validation),
        }
    return report


def _in_order(requests: Sequence[TracedRequest]) -> list[TracedRequest]:
    return sorted(requests, key=lambda r: r.start_s if r.start_s is not None else math.inf)


def skip_first(requests: Sequence[TracedRequest], n: int) -> list[TracedRequest]:
    """The requests without the first ``n`` to start (a server's warm-up)."""
    if n < 0 or n >= len(requests):
        raise ValueError(f"--skip-first must be in [0, {len(requests) - 1}] for {len(requests)} requests, got {n}")
    return _in_order(requests)[n:]


def cold_requests(requests: Sequence[TracedRequest], factor: float = 2.0) -> int:
    """How many requests from the start look cold: the last of the first tenth (at least 3) to
    take over ``factor`` × the median of the others. 0 when none does."""
    ordered = _in_order(requests)
    window = max(3, len(ordered) // 10)
    if len(ordered) < 2 * window:
        return 0
    typical = statistics.median(r.latency_s for r in ordered[window:])
    cold = [i for i, r in enumerate(ordered[:window]) if r.latency_s > factor * typical]
    return cold[-1] + 1 if cold else 0


@dataclass
class CapacityPlan:
    threshold: float | None
    large_step_fraction: float
    large_token_fraction: float
    small_tokens: float  # tokens per request on the small pool (glimpses included)
    large_tokens: float
    small_replicas: int
    large_replicas: int
    small_concurrency: float  # calls each replica runs at this load (analytic)
    large_concurrency: float
    small_utilization: float  # that concurrency over the calls a replica runs at once
    large_utilization: float
    predicted_p95_s: float  # the analytic model's
    simulated_p95_s: float | None = None  # the simulator's at these counts (None: not simulated)
    one_fewer_p95_s: dict[str, float | None] | None = None  # simulated, one replica fewer in each pool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_pools(
    workload: Workload, pools: Mapping[str, PoolModel], latency_target: Mapping[str, float], low: Mapping[str, int]
) -> dict[str, int]:
    """Replicas per pool, as the autoscaler sizes: the fewest (not overloaded, at least ``low``)
    at which a call arriving at random sees ``ℓ(1 + b)`` within the per-token latency target;
    where no count does (a lone call misses it), the count beyond which more do not help."""
    replicas = {}
    for pool in POOLS:
        demand = workload.rps * workload.tokens[pool]
        curve = pools[pool].curve
        n = low[pool]
        if latency_target[pool] <= curve.base_s:  # even a lone call misses: spread calls thin
            target = curve.target_concurrency(latency_target[pool], pools[pool].concurrency_cap)
            n = max(n, math.ceil(replicas_for(demand, curve, target) - 1e-6)) if demand else n
        else:
            while curve.latency_seen(curve.concurrency_at(demand, n)) > latency_target[pool]:
                n += 1
        replicas[pool] = n
    return replicas


def pool_models(
    requests: Sequence[TracedRequest],
    workload: Workload,
    max_concurrency: int,
    profiles: Mapping[str, EngineProfile] | None = None,
) -> dict[str, PoolModel]:
    """Each pool from its profile where given, else from the curve fitted from the traces."""
    profiles = profiles or {}
    missing = [p for p in POOLS if p not in profiles]
    curves = fit_curves(requests) if missing else {}
    glimpse = mean_glimpse_s(requests)
    models = {p: PoolModel.of(profiles[p], workload) for p in POOLS if p in profiles}
    for p in missing:
        models[p] = PoolModel.of(traced_profile(p, curves[p], max_concurrency, glimpse), workload, from_trace=True)
    return models


def _unreachable(slo: float, evaluate: Analytic, limit: int, cold: int) -> ValueError:
    floor = evaluate.p95(dict.fromkeys(evaluate.workload.pools, limit))
    hint = f"; the first {cold} traced requests look cold: --skip-first {cold} leaves them out" if cold else ""
    return ValueError(
        f"the p95 objective {slo:g} s is below what more replicas reach ({floor:.3f} s: "
        f"{evaluate.workload.overhead_s:.3f} s outside the models plus a lone call's model time){hint}"
    )


def plan(
    requests: Sequence[TracedRequest],
    rps: float,
    thresholds: Sequence[float] = (),
    slo_p95_s: float | None = None,
    latency_slack: float = 2.0,
    max_concurrency: int = 32,
    latency_target_s: float | None = None,
    max_replicas: int = 10_000,
    profiles: Mapping[str, EngineProfile] | None = None,
    overhead_s: float | None = None,
    confirmer: Confirmer | None = None,
) -> dict[str, Any]:
    """The traced routing and capacity, and the same for each what-if τ.

    ``profiles``: an engine profile per pool (default: curves fitted from the traces, at most
    ``max_concurrency`` calls per replica); ``overhead_s``: seconds per request outside the
    models (default: the traced median); ``slo_p95_s``: the fewest replicas whose p95 meets it,
    confirmed by ``confirmer`` (the simulator) when given; without it, each pool gets the fewest
    replicas at which a call arriving at random sees ``latency_target_s`` (or ``latency_slack`` ×
    a lone call's) per token, the autoscaler's rule.
    """
    if rps <= 0:
        raise ValueError(f"rps must be > 0, got {rps}")
    if latency_slack < 1:
        raise ValueError(f"latency_slack must be >= 1, got {latency_slack}")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    overhead = router_overhead_s(requests) if overhead_s is None else overhead_s
    cold = cold_requests(requests)
    plans, latency_target = [], {}
    for threshold in [None, *thresholds]:
        workload = Workload.at(requests, rps, threshold, overhead)
        pools = pool_models(requests, workload, max_concurrency, profiles)
        latency_target = {
            p: latency_target_s if latency_target_s is not None else latency_slack * pools[p].curve.base_s
            for p in POOLS
        }
        evaluate = Analytic(workload, pools)
        low = evaluate.low(max_replicas)
        simulated = one_fewer = None
        if slo_p95_s is None:
            replicas = size_pools(workload, pools, latency_target, low)
            if confirmer is not None:
                simulated = confirmer(workload, pools)(replicas)
        else:
            weights = dict.fromkeys(POOLS, 1.0)
            found, _ = cheapest(evaluate.p95, slo_p95_s, weights, low, limit=max_replicas)
            if found is None:
                raise _unreachable(slo_p95_s, evaluate, max_replicas, cold)
            replicas = found
            if confirmer is not None:
                confirmed = confirm(confirmer(workload, pools), slo_p95_s, found, weights, dict.fromkeys(POOLS, 1))
                if confirmed is None:
                    raise ValueError(
                        f"τ {threshold}: the simulator does not reach p95 ≤ {slo_p95_s:g} s by adding replicas "
                        f"to the analytic plan {found}"
                    )
                replicas, simulated, one_fewer = confirmed.replicas, confirmed.p95_s, confirmed.one_fewer_p95_s
        estimate = evaluate(replicas)
        caps = {p: pools[p].concurrency_cap for p in POOLS}
        plans.append(
            CapacityPlan(
                threshold=threshold,
                large_step_fraction=workload.large_step_fraction,
                large_token_fraction=workload.large_token_fraction,
                small_tokens=workload.tokens["small"],
                large_tokens=workload.tokens["large"],
                small_replicas=replicas["small"],
                large_replicas=replicas["large"],
                small_concurrency=estimate.concurrency["small"],
                large_concurrency=estimate.concurrency["large"],
                small_utilization=estimate.concurrency["small"] / caps["small"],
                large_utilization=estimate.concurrency["large"] / caps["large"],
                predicted_p95_s=estimate.p95_s,
                simulated_p95_s=simulated,
                one_fewer_p95_s=one_fewer,
            )
        )
    latencies = [r.latency_s for r in requests]
    base = Workload.at(requests, rps, None, overhead)
    pools = pool_models(requests, base, max_concurrency, profiles)
    return {
        "requests": len(requests),
        "rps": rps,
        "max_concurrency": {p: pools[p].concurrency_cap for p in POOLS},
        "latency_target_s": latency_target,
        "slo_p95_s": slo_p95_s,
        "simulated": confirmer is not None,
        "overhead_s": overhead,
        "cold_requests": cold,
        "traced_mean_latency_s": sum(latencies) / len(latencies),
        "traced_p95_latency_s": percentile(latencies, 95),
        "curves": {
            p: {
                "base_s": pools[p].curve.base_s,
                "slope_s": pools[p].curve.slope_s,
                "source": "traces" if pools[p].from_trace else pools[p].profile.model,
            }
            for p in POOLS
        },
        "traced_concurrency_max": {
            p: max((c.concurrency for r in requests for c in r.calls if c.route == p), default=0.0) for p in POOLS
        },
        "glimpse_model_s": mean_glimpse_s(requests) if pools["small"].from_trace else pools["small"].profile.glimpse_s,
        "plans": [p.to_dict() for p in plans],
    }

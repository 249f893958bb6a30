"""Placements: which GPU type, tensor-parallel degree and replica count each pool gets.

The options come from a gpus file (:mod:`glimp_ray.gpu_options`). :func:`plan_placements` tries
every pair of options at each τ: the analytic model's cheapest counts for each pair
(:func:`glimp_ray.plan_search.cheapest`, cost = replicas × GPUs per replica × price), then the
simulator confirms the cheapest pairs, in that order, until the next pair's analytic cost is
above 1.25 × the cheapest confirmed one (at most four pairs). Large-only (every step and the
answer on the large model, no small pool) is planned the same way for the same objective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glimp_ray.gpu_options import PlacementError, PoolOption, load_gpus, pool_options
from glimp_ray.plan_model import Analytic, PoolModel, Workload, router_overhead_s
from glimp_ray.plan_search import cheapest, confirm
from glimp_ray.planner import Confirmer
from glimp_ray.traces import TracedRequest

__all__ = ["PlacementError", "Placement", "choose", "load_gpus", "plan_placements", "pool_options"]

# Pairs are confirmed, cheapest by the analytic model first, while their analytic cost is below
# this multiple of the cheapest confirmed one (and at most ``max_confirm`` of them).
CONFIRM_MARGIN = 1.25


@dataclass(frozen=True)
class Placement:
    """Replicas of each pool on an option, and what the evaluators say of them."""

    options: dict[str, PoolOption]
    replicas: dict[str, int]
    analytic_p95_s: float
    simulated_p95_s: float | None = None
    one_fewer_p95_s: dict[str, float | None] | None = None

    @property
    def cost_per_hour(self) -> float:
        return sum(self.replicas[p] * o.price_per_replica_hour for p, o in self.options.items())

    def to_dict(self) -> dict[str, Any]:
        pools = {
            p: {**o.describe(), "replicas": self.replicas[p], "gpus": self.replicas[p] * o.tensor_parallel}
            for p, o in self.options.items()
        }
        return {
            **pools,
            "cost_per_hour": self.cost_per_hour,
            "analytic_p95_s": self.analytic_p95_s,
            "simulated_p95_s": self.simulated_p95_s,
            "one_fewer_p95_s": self.one_fewer_p95_s,
        }


def cheapest_placements(
    workload: Workload, options: Mapping[str, Sequence[PoolOption]], slo_p95_s: float, max_replicas: int
) -> list[Placement]:
    """Every pair of options (one per pool of the workload) with its cheapest counts that the
    analytic model says meet the objective, cheapest first; pairs that cannot are left out."""
    pairs: list[dict[str, PoolOption]] = [{}]
    for pool in workload.pools:
        pairs = [{**pair, pool: option} for pair in pairs for option in options[pool]]
    found = []
    for pair in pairs:
        evaluate = Analytic(workload, {p: PoolModel.of(o.profile, workload) for p, o in pair.items()})
        weights = {p: o.price_per_replica_hour for p, o in pair.items()}
        replicas, memo = cheapest(evaluate.p95, slo_p95_s, weights, evaluate.low(max_replicas), limit=max_replicas)
        if replicas is not None:
            found.append(Placement(pair, replicas, memo(replicas)))
    return sorted(found, key=lambda p: (round(p.cost_per_hour, 9), sum(p.replicas.values()), p.analytic_p95_s))


def choose(
    workload: Workload,
    options: Mapping[str, Sequence[PoolOption]],
    slo_p95_s: float,
    confirmer: Confirmer | None,
    max_replicas: int = 1000,
    max_confirm: int = 4,
) -> tuple[Placement | None, list[Placement]]:
    """The cheapest placement that meets the objective (confirmed when ``confirmer`` is given),
    and the analytic candidates it was chosen from."""
    candidates = cheapest_placements(workload, options, slo_p95_s, max_replicas)
    if confirmer is None or not candidates:
        return (candidates[0] if candidates else None), candidates
    best: Placement | None = None
    for candidate in candidates[:max_confirm]:
        # The analytic model flags overload earlier than the simulator queues: its counts run a
        # replica or so above the confirmed ones, so a pair somewhat dearer by it may confirm cheaper.
        if best is not None and candidate.cost_per_hour >= CONFIRM_MARGIN * best.cost_per_hour:
            break
        pools = {p: PoolModel.of(o.profile, workload) for p, o in candidate.options.items()}
        weights = {p: o.price_per_replica_hour for p, o in candidate.options.items()}
        confirmed = confirm(
            confirmer(workload, pools), slo_p95_s, candidate.replicas, weights, dict.fromkeys(pools, 1), max_replicas
        )
        if confirmed is None:
            continue
        placement = Placement(
            candidate.options,
            confirmed.replicas,
            Analytic(workload, pools).p95(confirmed.replicas),
            confirmed.p95_s,
            confirmed.one_fewer_p95_s,
        )
        if best is None or placement.cost_per_hour < best.cost_per_hour:
            best = placement
    return best, candidates


def plan_placements(
    requests: Sequence[TracedRequest],
    rps: float,
    slo_p95_s: float,
    options: Mapping[str, Sequence[PoolOption]],
    thresholds: Sequence[float] = (),
    overhead_s: float | None = None,
    confirmer: Confirmer | None = None,
    max_replicas: int = 1000,
) -> dict[str, Any]:
    """The cheapest placement at the traced routing and at each τ, and large-only, as a report."""
    if rps <= 0 or slo_p95_s <= 0:
        raise ValueError(f"rps and the p95 objective must be > 0, got {rps}, {slo_p95_s}")
    overhead = router_overhead_s(requests) if overhead_s is None else overhead_s
    large_only, large_candidates = choose(
        Workload.large_only(requests, rps, overhead), options, slo_p95_s, confirmer, max_replicas
    )
    plans = []
    for threshold in [None, *thresholds]:
        workload = Workload.at(requests, rps, threshold, overhead)
        best, candidates = choose(workload, options, slo_p95_s, confirmer, max_replicas)
        saving = None
        if best is not None and large_only is not None:
            saving = 1 - best.cost_per_hour / large_only.cost_per_hour
        plans.append(
            {
                "threshold": threshold,
                "large_step_fraction": workload.large_step_fraction,
                "large_token_fraction": workload.large_token_fraction,
                "best": best.to_dict() if best else None,
                "saving": saving,
                "candidates": [c.to_dict() for c in candidates],
            }
        )
    return {
        "requests": len(requests),
        "rps": rps,
        "slo_p95_s": slo_p95_s,
        "overhead_s": overhead,
        "simulated": confirmer is not None,
        "placeholder_prices": any(o.placeholder_price for opts in options.values() for o in opts),
        "options": {p: [o.describe() for o in opts] for p, opts in options.items()},
        "large_only": large_only.to_dict() if large_only else None,
        "large_only_candidates": [c.to_dict() for c in large_candidates],
        "plans": plans,
    }

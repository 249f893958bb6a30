"""The simulator as the planner's confirming evaluator: the p95 of a workload on fixed counts.

Each run replays the workload's traced requests (re-routed at its τ; for large-only, every call
on the large model without a glimpse) arriving as a Poisson process at the target rate, on pools
of fixed size (no autoscaling), for ``requests`` arrivals after a warm-up of a tenth of that,
with a fixed seed: the same counts give the same p95, and the counts the planner compares see
the same arrivals.
"""

from __future__ import annotations

from collections.abc import Mapping

from glimp_ray.plan_model import PoolModel, Workload
from glimp_ray.plan_search import P95
from glimp_ray.planner import Confirmer

WARMUP_FRACTION = 0.1


def simulator(requests: int = 2000, seed: int = 0) -> Confirmer:
    """A :data:`glimp_ray.planner.Confirmer` running :func:`glimp_ray.sim.simulate`."""

    def build(workload: Workload, pools: Mapping[str, PoolModel]) -> P95:
        try:
            from glimp_ray.sim import PoolSpec, SimConfig, simulate
        except ImportError as exc:  # simpy missing
            raise ValueError(f"the simulator cannot run ({exc}): install simpy, or plan with --no-simulate") from None

        measured_s = requests / workload.rps
        warmup_s = WARMUP_FRACTION * measured_s

        def p95(replicas: Mapping[str, int]) -> float:
            specs = {
                p: PoolSpec(pools[p].profile, replicas[p], max_concurrency=pools[p].concurrency_cap)
                for p in workload.pools
            }
            config = SimConfig(
                requests=workload.requests,
                pools=specs,
                arrivals=workload.rps,
                duration_s=warmup_s + measured_s,
                threshold=workload.threshold,
                router_overhead_s=workload.overhead_s,
                warmup_s=warmup_s,
                seed=seed,
            )
            return float(simulate(config).p95_s)

        return p95

    return build

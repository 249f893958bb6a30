"""The application-level autoscaling policy: sizes both pools from the routing ratio.

Name it in the Serve config file (Ray 2.60 takes an application-level policy only there)::

    applications:
      - name: glimp
        import_path: deployments.app:build_app
        autoscaling_policy:
          policy_function: deployments.autoscaling:RoutingRatioPolicy
          policy_kwargs:
            small: {profile: configs/profiles/demo-small-hf-cpu.json}
            large: {profile: configs/profiles/demo-large-hf-cpu.json, context_tokens: 2048}
        args:
          serving:
            small: {num_replicas: auto, autoscaling_config: {min_replicas: 1, max_replicas: 4}}
            large: {num_replicas: auto, autoscaling_config: {min_replicas: 1, max_replicas: 8}}

Each pool's ``autoscaling_config`` gives its bounds and Ray's ``upscale_delay_s`` /
``downscale_delay_s``; ``policy_kwargs`` give :class:`~glimp_ray.autoscaling.PoolScaling`
fields per pool. ``profile`` names a pool's engine profile (``glimp-ray profile``), read once
here: the policy's prior from the first window (a path relative to Serve's working directory);
``context_tokens`` with it caps a replica's concurrency at what its KV budget holds. The router
reports request rate and routing ratio, the model servers their service rate, queue and
batching point (``record_autoscaling_stats``); the arithmetic is in :mod:`glimp_ray.autoscaling`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from glimp_ray.autoscaling import Decision, PoolLoad, PoolScaling, PoolState, RouterLoad, decide_pool
from glimp_ray.profile import EngineProfile

logger = logging.getLogger("ray.serve")

POOLS = {"SmallPool": "small", "LargePool": "large"}
ROUTER = "GlimpRouter"


def _values(ctx: Any, metric: str) -> list[float]:
    return list((ctx.aggregated_metrics or {}).get(metric, {}).values())


def router_load(ctx: Any) -> RouterLoad | None:
    """The routers' reports summed (rates) or rate-weighted (ratios); None before any came."""
    rates = _values(ctx, "request_rate")
    if not rates:
        return None
    total = sum(rates)
    weights = [r / total for r in rates] if total else [1 / len(rates)] * len(rates)

    def mean(metric: str) -> float:
        return sum(w * v for w, v in zip(weights, _values(ctx, metric), strict=False))

    return RouterLoad(
        request_rate=total,
        tokens_per_request=mean("tokens_per_request"),
        token_share={"small": mean("small_token_share"), "large": mean("large_token_share")},
        step_share={"large": mean("large_step_share")},
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pool_load(ctx: Any) -> PoolLoad:
    """A pool's replicas' reports: mean service rate and batching point, total queue (engines plus
    handle queues)."""
    max_concurrency = _values(ctx, "max_concurrency")
    kv_concurrency = [v for v in _values(ctx, "kv_concurrency") if v > 0]
    return PoolLoad(
        replicas=ctx.target_num_replicas,
        service_rate=_mean([r for r in _values(ctx, "service_rate") if r > 0]),
        queued=sum(_values(ctx, "queued")) + (ctx.total_queued_requests or 0),
        concurrency=_mean(_values(ctx, "concurrency")),
        latency_s=_mean([v for v in _values(ctx, "latency_s") if v > 0]),
        max_concurrency=min(max_concurrency) if max_concurrency else None,
        kv_concurrency=min(kv_concurrency) if kv_concurrency else None,  # reported by a replica, where it does
    )


def pool_scaling(pool: str, kwargs: dict[str, Any] | None) -> PoolScaling:
    """A pool's :class:`PoolScaling` from its ``policy_kwargs``, its ``profile`` path loaded."""
    kwargs = dict(kwargs or {})
    path = kwargs.get("profile")
    if path is not None and not isinstance(path, EngineProfile):
        try:
            kwargs["profile"] = EngineProfile.load(path)
        except ValueError as exc:
            raise ValueError(f"autoscaling policy_kwargs.{pool}.profile: {exc}") from None
    return PoolScaling(**kwargs)


class RoutingRatioPolicy:
    """Ray Serve application-level policy (a class: Serve builds it once with ``policy_kwargs``)."""

    def __init__(
        self,
        small: dict[str, Any] | None = None,
        large: dict[str, Any] | None = None,
        pools: dict[str, str] | None = None,
        router: str = ROUTER,
        log_every_s: float = 60.0,
    ):
        self.scaling = {"small": pool_scaling("small", small), "large": pool_scaling("large", large)}
        self.pools = dict(pools or POOLS)
        self.router = router
        self.log_every_s = log_every_s  # a decision that changes nothing is still logged this often
        self.states = {pool: PoolState() for pool in self.scaling}
        self.decisions: dict[str, Decision] = {}
        self.logged_at: dict[str, float] = {}

    def __call__(self, contexts: dict[Any, Any]) -> tuple[dict[Any, float], dict[Any, dict[str, Any]]]:
        router_ctx = next((ctx for dep, ctx in contexts.items() if dep.name == self.router), None)
        router = router_load(router_ctx) if router_ctx is not None else None
        decisions: dict[Any, float] = {}
        states: dict[Any, dict[str, Any]] = {}
        for dep, ctx in contexts.items():
            pool = self.pools.get(dep.name)
            if pool is None:
                continue  # the router (and anything else) keeps its own count
            scaling = dataclasses.replace(
                self.scaling[pool],
                min_replicas=ctx.capacity_adjusted_min_replicas,
                max_replicas=ctx.capacity_adjusted_max_replicas,
            )
            now = ctx.current_time if ctx.current_time is not None else time.time()
            load = pool_load(ctx)
            decision = decide_pool(router, pool, load, scaling, self.states[pool], now)
            previous = self.decisions.get(pool)
            changed = previous is None or previous.replicas != decision.replicas
            if changed or now - self.logged_at.get(pool, -math.inf) >= self.log_every_s:
                self.logged_at[pool] = now
                logger.info(
                    "routing-ratio policy: %s pool %d -> %d replicas (desired %.2f, demand %s tokens/s, "
                    "service rate %s tokens/s, %s requests per replica, %.1f calls in flight%s)",
                    pool,
                    load.replicas,
                    decision.replicas,
                    decision.desired,
                    _fmt(decision.demand),
                    _fmt(decision.state.service_rate),
                    _fmt(decision.target_concurrency),
                    load.queued,
                    "" if router is not None else ", no router report yet",
                )
            self.states[pool], self.decisions[pool] = decision.state, decision
            decisions[dep] = decision.replicas
            states[dep] = {
                "desired": decision.desired,
                "demand": decision.demand,
                "target_concurrency": decision.target_concurrency,
            }
        return decisions, states


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

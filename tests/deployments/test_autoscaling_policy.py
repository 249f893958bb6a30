"""The application-level policy on synthetic Ray Serve autoscaling contexts (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402
from ray.serve.config import AutoscalingContext  # noqa: E402

from deployments.autoscaling import RoutingRatioPolicy  # noqa: E402

APP = "glimp"


def context(name: str, replicas: int, metrics: dict[str, list[float]], bounds: tuple[int, int] = (1, 8)) -> Any:
    dep = DeploymentID(name=name, app_name=APP)
    ids = [ReplicaID(unique_id=f"{name}-{i}", deployment_id=dep) for i in range(replicas)]
    return AutoscalingContext(
        deployment_id=dep,
        deployment_name=name,
        app_name=APP,
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=ids,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics={metric: dict(zip(ids, values, strict=True)) for metric, values in metrics.items()},
        raw_metrics={},
        capacity_adjusted_min_replicas=bounds[0],
        capacity_adjusted_max_replicas=bounds[1],
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=100.0,
        config=None,
    )


def contexts(large_share: float, large_replicas: int = 1, rate: float = 2.0) -> dict[Any, Any]:
    """Two routers (their rates add up), two small and ``large_replicas`` large replicas."""
    router = context(
        "GlimpRouter",
        2,
        {
            "request_rate": [rate / 2, rate / 2],
            "tokens_per_request": [300.0, 300.0],
            "small_token_share": [1 - large_share] * 2,
            "large_token_share": [large_share] * 2,
            "large_step_share": [large_share] * 2,
        },
        bounds=(2, 2),
    )
    small = context("SmallPool", 2, {"service_rate": [100.0, 100.0], "queued": [1.0, 1.0]})
    large = context(
        "LargePool", large_replicas, {"service_rate": [100.0] * large_replicas, "queued": [0.0] * large_replicas}
    )
    return {ctx.deployment_id: ctx for ctx in (router, small, large)}


def by_name(decisions: dict[Any, float]) -> dict[str, float]:
    return {dep.name: n for dep, n in decisions.items()}


def test_ratio_up_large_pool_up_small_pool_down() -> None:
    policy = RoutingRatioPolicy(
        small={"target_utilization": 0.5, "smoothing_s": 0}, large={"target_utilization": 0.5, "smoothing_s": 0}
    )
    low, state = policy(contexts(0.1))
    # Demand: 2 req/s x 300 tokens; at 50% of 100 tokens/s a replica plans for 50 tokens/s.
    assert by_name(low) == {"SmallPool": 8, "LargePool": 2}  # small wants 10.8, capped at max 8
    assert "GlimpRouter" not in by_name(low)  # the router keeps its own count
    assert {dep.name: s["desired"] for dep, s in state.items()} == pytest.approx({"SmallPool": 10.8, "LargePool": 1.2})
    high, _ = policy(contexts(0.5, large_replicas=2))
    assert by_name(high) == {"SmallPool": 6, "LargePool": 6}


def test_bounds_come_from_each_deployments_autoscaling_config() -> None:
    policy = RoutingRatioPolicy(large={"smoothing_s": 0})
    ctxs = contexts(1.0)
    large = next(ctx for ctx in ctxs.values() if ctx.deployment_name == "LargePool")
    large.capacity_adjusted_max_replicas = 3
    decisions, _ = policy(ctxs)
    assert by_name(decisions)["LargePool"] == 3


def test_no_router_report_keeps_the_pools() -> None:
    policy = RoutingRatioPolicy()
    ctxs = {dep: ctx for dep, ctx in contexts(0.5, large_replicas=3).items() if dep.name != "GlimpRouter"}
    decisions, _ = policy(ctxs)
    assert by_name(decisions) == {"SmallPool": 2, "LargePool": 3}


def test_bad_policy_kwargs_fail_at_construction() -> None:
    with pytest.raises(TypeError):
        RoutingRatioPolicy(large={"target_utilisation": 0.5})
    with pytest.raises(ValueError, match="target_utilization"):
        RoutingRatioPolicy(small={"target_utilization": 2.0})


def test_router_user_config_changes_routing_and_rejects_bad_input() -> None:
    from types import SimpleNamespace

    from deployments.config import AppConfig
    from deployments.router import GlimpRouter

    reconfigure = GlimpRouter.func_or_class.reconfigure  # the method, without starting Serve
    config = AppConfig.model_validate({"routing": {"threshold": 0.5}})
    restarts: list[float] = []  # the online τ starts over from a new routing section
    router = SimpleNamespace(config=config, collab=SimpleNamespace(params=config.collab_params()))
    router._control_tau = lambda: restarts.append(router.config.routing.threshold)
    reconfigure(router, {"routing": {"threshold": 0.1}, "sampling": {"temperature": 0.0}})
    assert (router.collab.params.threshold, router.collab.params.temperature) == (0.1, 0.0)
    assert router.collab.params.policy == "entropy"  # what was not given stays
    reconfigure(router, {"sampling": {"temperature": 0.5}})
    assert restarts == [0.1]
    with pytest.raises(ValueError, match="routing, sampling and limits"):
        reconfigure(router, {"serving": {"retries": 1}})
    with pytest.raises(ValueError, match="temperature"):
        reconfigure(router, {"sampling": {"temperature": -1}})
    assert router.collab.params.threshold == 0.1  # a rejected config changes nothing


def batching_contexts() -> dict[Any, Any]:
    """The large replicas report 4 calls at once while busy at 20 ms per token; they may run 16."""
    ctxs = contexts(0.5, large_replicas=2)
    large = next(ctx for ctx in ctxs.values() if ctx.deployment_name == "LargePool")
    for metric, value in {"concurrency": 4.0, "latency_s": 0.02, "max_concurrency": 16.0}.items():
        large.aggregated_metrics[metric] = dict.fromkeys(large.running_replicas, value)
    return ctxs


def test_batching_reports_size_the_pool_by_concurrency() -> None:
    # One report cannot tell the slope. Without a profile the prior is conservative: each extra
    # call adds a quarter of a lone one's time, so ℓ(4) = 20 ms puts the base at 11.4 ms, the
    # target (2 x base) at 22.9 ms, and a call arriving at random sees the target at b* = 4
    # others: 300 tokens/s x 22.9 ms / 4 = 1.71 replicas. The old fit took the slope as 0 here
    # and planned 16 calls per replica.
    policy = RoutingRatioPolicy(small={"smoothing_s": 0}, large={"smoothing_s": 0})
    decisions, state = policy(batching_contexts())
    large_state = next(s for dep, s in state.items() if dep.name == "LargePool")
    assert large_state["target_concurrency"] == pytest.approx(4.0)
    assert large_state["desired"] == pytest.approx(300 * (2 * 0.02 / 1.75) / 4)
    assert by_name(decisions)["LargePool"] == 2


def write_profile(path: Any, decode_s: dict[int, float], max_concurrency: int = 16) -> str:
    from glimp_ray.profile import EngineProfile

    EngineProfile(
        model="demo-large",
        engine="hf",
        dtype="float32",
        accelerator="cpu:test",
        decode_s=decode_s,
        prefill_s_per_token=0.001,
        glimpse_s=0.01,
        kv_bytes_per_token=1000,
        kv_budget_bytes=10_000_000,
        max_concurrency=max_concurrency,
    ).save(path)
    return str(path)


def test_a_profile_is_the_prior_from_the_first_window(tmp_path: Any) -> None:
    # The measured curve: 10 ms alone, +0.5 ms per extra call. Target 20 ms: b* = 15 others
    # (a free slot of 16), 300 tokens/s x 17.5 ms / 15 = 0.35 replicas: one.
    profile = write_profile(tmp_path / "large.json", {1: 0.010, 2: 0.0105, 4: 0.0115, 8: 0.0135, 16: 0.0175})
    policy = RoutingRatioPolicy(small={"smoothing_s": 0}, large={"smoothing_s": 0, "profile": profile})
    assert policy.scaling["large"].profile is not None
    decisions, state = policy(contexts(0.5, large_replicas=2))  # no batching report yet
    large_state = next(s for dep, s in state.items() if dep.name == "LargePool")
    assert large_state["target_concurrency"] == pytest.approx(15.0)
    assert large_state["desired"] == pytest.approx(300 * 0.0175 / 15)
    assert by_name(decisions)["LargePool"] == 1
    # The KV budget at 1,000 tokens of context holds 10 calls: b* = 9, ℓ(10) = 14.5 ms.
    kv = RoutingRatioPolicy(large={"smoothing_s": 0, "profile": profile, "context_tokens": 1000})
    _, state = kv(contexts(0.5, large_replicas=2))
    large_state = next(s for dep, s in state.items() if dep.name == "LargePool")
    assert large_state["target_concurrency"] == pytest.approx(9.0)
    assert large_state["desired"] == pytest.approx(300 * 0.0145 / 9)


def test_a_bad_profile_is_one_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"policy_kwargs\.large\.profile: profile not found: .*missing\.json"):
        RoutingRatioPolicy(large={"profile": str(tmp_path / "missing.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"policy_kwargs\.small\.profile: .*bad\.json: not a glimp-ray profile"):
        RoutingRatioPolicy(small={"profile": str(bad)})

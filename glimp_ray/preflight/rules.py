"""Rules on the config alone, checked with or without a cluster: top-k glimpses a vLLM small model
cannot give (finding 6), an HF pool's device against the GPUs Ray gives its replica (finding 8), and
accelerator names Ray detects on a node (finding 1)."""

from __future__ import annotations

from typing import Any

from glimp_ray.config import VLLM_MAX_LOGPROBS, ModelConfig
from glimp_ray.hardware import RAY_DETECTED
from glimp_ray.preflight.manifests import Cluster
from glimp_ray.preflight.report import Problem, error

Pools = dict[str, tuple[ModelConfig, Any]]  # small|large -> (the model, its PoolDeployment)


def top_k(args: dict[str, Any]) -> list[Problem]:
    """Finding 6: vLLM gives at most ``max_logprobs`` (20) logprobs; more fails every glimpse.
    Reported here by name; the rest is checked as if top_k were 20."""
    small, routing = args.get("small") or {}, args.get("routing") or {}
    top_k = routing.get("top_k")
    if small.get("engine") != "vllm" or not isinstance(top_k, int) or top_k <= VLLM_MAX_LOGPROBS:
        return []
    args["routing"] = {**routing, "top_k": VLLM_MAX_LOGPROBS}
    return [
        error(
            "routing.top_k",
            f"{top_k} is above vLLM's max_logprobs ({VLLM_MAX_LOGPROBS}) and small.engine is vllm: every glimpse "
            f"would fail; set routing.top_k to at most {VLLM_MAX_LOGPROBS}",
        )
    ]


def router_top_k(app: dict[str, Any], args: dict[str, Any]) -> list[Problem]:
    """The same for a top_k set at runtime in the router's user_config."""
    if (args.get("small") or {}).get("engine") != "vllm":
        return []
    problems = []
    for entry in app.get("deployments") or []:
        routing = (entry.get("user_config") or {}).get("routing") or {}
        top_k = routing.get("top_k")
        if isinstance(top_k, int) and top_k > VLLM_MAX_LOGPROBS:
            problems.append(
                error(
                    f"deployments[{entry.get('name')}].user_config.routing.top_k",
                    f"{top_k} is above vLLM's max_logprobs ({VLLM_MAX_LOGPROBS}): every glimpse would fail; "
                    f"set it to at most {VLLM_MAX_LOGPROBS}",
                )
            )
    return problems


def devices(pools: Pools) -> list[Problem]:
    """Finding 8: an HF pool computes on ``device``, whatever GPUs Ray gave its replica."""
    problems = []
    for which, (model, pool) in pools.items():
        if model.engine != "hf" or model.stand_in is not None:
            continue
        if pool.num_gpus > 0 and model.device == "cpu":
            problems.append(
                error(
                    f"{which}.device",
                    f"cpu while serving.{which}.num_gpus is {pool.num_gpus:g}: the replica holds a GPU and computes "
                    "on the CPU; set device: auto (or cuda)",
                )
            )
        if pool.num_gpus == 0 and model.device.startswith("cuda"):
            problems.append(
                error(
                    f"{which}.device",
                    f"{model.device} while serving.{which}.num_gpus is 0: Ray hides every GPU from the replica; "
                    "set num_gpus or device: auto",
                )
            )
    return problems


def accelerator_names(pools: Pools, cluster: Cluster | None) -> tuple[list[Problem], set[str]]:
    """Finding 1: a name Ray does not detect places nothing unless a node declares it. Also returns
    the deployments it blocks (their placement is not diagnosed again)."""
    problems: list[Problem] = []
    blocked = set()
    for which, (_, pool) in pools.items():
        name = pool.accelerator_type
        if name is None or name in RAY_DETECTED:
            continue
        if cluster is not None and any(f"accelerator_type:{name}" in t.resources for t in cluster.node_types):
            continue
        detected = name.split("-")[0]
        fix = f"use {detected} (what Ray detects" if detected in RAY_DETECTED else "use the name Ray detects ("
        problems.append(
            error(
                f"serving.{which}.accelerator_type",
                f"{name} is not a name Ray detects on a node and no node type declares accelerator_type:{name}, "
                f"so no replica is ever placed: {fix}, e.g. for 40 and 80 GB A100s alike) and tell GPU sizes apart "
                "by the node type's label in label_selector",
            )
        )
        blocked.add(f"{which.title()}Pool")
    return problems, blocked

"""Where Ray can place each deployment's replicas on a cluster's node types, and whether the
autoscaler can add a node for a replica that does not fit on the nodes already there.

A replica asks for what ``Deployment.options`` says (``PoolDeployment.deployment_options``): a
plain actor (CPUs, GPUs, ``accelerator_type:<NAME>`` at 0.001, custom resources, a label
selector), or, for a tensor-parallel vLLM pool, a placement group whose bundles are packed on one
node. Replicas are placed first fit, GPU deployments first, on the nodes a cluster starts with and
then on nodes the autoscaler adds, which it does only for a node type whose advertised resources
and labels hold the replica. Ray's own scheduler spreads differently; the counts are what fits,
not where each replica will be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glimp_ray.preflight.manifests import Cluster, NodeType

_EPS = 1e-9


@dataclass(frozen=True)
class Demand:
    """What one replica of a deployment asks Ray for."""

    deployment: str
    where: str  # the config section, e.g. serving.small
    bundles: tuple[dict[str, float], ...]  # one for a plain actor
    label_selector: dict[str, str]
    min_replicas: int
    max_replicas: int
    autoscaled: bool = False

    @property
    def packed(self) -> dict[str, float]:
        """The replica's resources on one node (its bundles packed together)."""
        total: dict[str, float] = {}
        for bundle in self.bundles:
            for key, value in bundle.items():
                total[key] = total.get(key, 0.0) + value
        return total

    @property
    def gpus(self) -> float:
        return self.packed.get("GPU", 0.0)


def demand_of(where: str, options: dict[str, Any]) -> Demand:
    """A replica's demand from ``Deployment.options`` keyword arguments."""
    from ray._common.utils import resources_from_ray_options

    actor = options.get("ray_actor_options") or {}
    if options.get("placement_group_bundles"):
        bundles = [dict(b) for b in options["placement_group_bundles"]]
        selectors = options.get("placement_group_bundle_label_selector") or [{}]
        selector = dict(selectors[0])  # Serve applies a single selector to every bundle
    else:
        bundles = [resources_from_ray_options(actor)]
        selector = dict(actor.get("label_selector") or {})
    scaling = options.get("autoscaling_config")
    if scaling is not None:
        low = int(scaling.get("min_replicas", 1))
        high = int(scaling.get("max_replicas", 1))
        low = max(low, int(scaling.get("initial_replicas") or low))
    else:
        low = high = int(options.get("num_replicas", 1))
    clean = tuple({k: float(v) for k, v in b.items() if v} for b in bundles)
    return Demand(options["name"], where, clean, selector, low, high, scaling is not None)


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Ray's label selector: ``value``, ``!value``, ``in(a, b)``, ``!in(a, b)``."""
    for key, wanted in selector.items():
        negate = wanted.startswith("!")
        wanted = wanted[1:] if negate else wanted
        if wanted.startswith("in(") and wanted.endswith(")"):
            ok = labels.get(key) in {v.strip() for v in wanted[3:-1].split(",")}
        else:
            ok = labels.get(key) == wanted
        if ok == negate:
            return False
    return True


def shortfall(needed: dict[str, float], available: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Resources short: name -> (needed, available)."""
    return {k: (v, available.get(k, 0.0)) for k, v in needed.items() if available.get(k, 0.0) + _EPS < v}


def why_not(demand: Demand, node: NodeType, advertised: bool = False) -> list[str]:
    """Why a replica cannot go on an empty node of ``node`` (as running, or as the autoscaler sees it)."""
    labels = node.advertised_labels if advertised else node.labels
    resources = node.advertised if advertised else node.resources
    reasons = []
    missing = {k: v for k, v in demand.label_selector.items() if not labels_match({k: v}, labels)}
    if missing:
        reasons.append("labels " + ", ".join(f"{k}={v}" for k, v in missing.items()))
    for key, (need, have) in shortfall(demand.packed, resources).items():
        # accelerator_type:<NAME> is asked at 0.001 a bundle: only its presence matters
        reasons.append(key if key.startswith("accelerator_type:") else f"{key} {need:g} (has {have:g})")
    return reasons


@dataclass
class _Node:
    type: NodeType
    started: bool  # present from the start, or added by the autoscaler for an earlier replica
    free: dict[str, float] = field(default_factory=dict)


@dataclass
class Placement:
    """Where the replicas of each deployment went (node type names, one per placed replica)."""

    placed: dict[str, list[str]]


def place(demands: list[Demand], cluster: Cluster) -> Placement:
    """First-fit placement of every deployment's ``max_replicas`` on the cluster's node types."""
    nodes: list[_Node] = []
    for node_type in cluster.node_types:
        for i in range(node_type.max_workers):
            nodes.append(_Node(node_type, started=i < node_type.min_workers, free=dict(node_type.resources)))
    nodes.sort(key=lambda n: not n.started)  # nodes already there first, as Ray fills them first
    placed: dict[str, list[str]] = {}
    for demand in sorted(demands, key=lambda d: -d.gpus):
        went = placed.setdefault(demand.deployment, [])
        packed = demand.packed
        for _ in range(demand.max_replicas):
            node = next((n for n in nodes if _takes(n, demand, packed)), None)
            if node is None:
                break
            node.started = True
            for key, value in packed.items():
                node.free[key] = node.free.get(key, 0.0) - value
            went.append(node.type.name)
    return Placement(placed)


def _takes(node: _Node, demand: Demand, packed: dict[str, float]) -> bool:
    if not labels_match(demand.label_selector, node.type.labels) or shortfall(packed, node.free):
        return False
    # A node not started yet is added only when the autoscaler sees the replica fit its type.
    return node.started or not why_not(demand, node.type, advertised=True)

"""What stops replicas from being placed, from a first-fit placement on the manifest's node types:
no node type holds one, the autoscaler cannot add a node for it (finding 3: a group that does not
advertise the accelerator or labels the replica asks for), or the node types' max workers are too
few for max_replicas."""

from __future__ import annotations

from glimp_ray.preflight.manifests import Cluster, NodeType, dump_resources
from glimp_ray.preflight.placement import Demand, Placement, shortfall, why_not
from glimp_ray.preflight.report import Problem, error, warning


def _replicas_field(demand: Demand) -> str:
    if demand.autoscaled and demand.where != "serving.router":  # the router's bounds are its num_replicas
        return f"{demand.where}.autoscaling_config.max_replicas"
    return f"{demand.where}.num_replicas"


def placement_problems(
    demands: list[Demand], placement: Placement, cluster: Cluster, blocked: set[str]
) -> list[Problem]:
    """Replicas that cannot be placed, and why: no node type fits, the autoscaler cannot add one
    (finding 3), or the node types' max workers are too few."""
    problems = []
    for demand in demands:
        placed = len(placement.placed.get(demand.deployment, []))
        if placed >= demand.max_replicas or demand.deployment in blocked:
            continue
        hosts = [t for t in cluster.node_types if not why_not(demand, t)]
        if not hosts:
            reasons = "; ".join(f"{t.name} lacks {', '.join(why_not(demand, t))}" for t in cluster.node_types)
            problems.append(error(demand.where, f"no node type can hold a {demand.deployment} replica: {reasons}"))
            continue
        unseen = [t for t in hosts if t.max_workers > t.min_workers and why_not(demand, t, advertised=True)]
        for node in unseen:
            missing = why_not(demand, node, advertised=True)
            problems.append(
                error(
                    cluster.field_of(node),
                    f"the autoscaler does not see {', '.join(missing)} on a {node.name} node it could add, so "
                    f"{demand.deployment} replicas beyond the {placed} that fit on the nodes there from the start "
                    f"wait forever (max {demand.max_replicas}): {_advertise_fix(cluster, node, demand)}",
                )
            )
        if unseen:
            continue
        names = ", ".join(t.name for t in hosts)
        problems.append(
            error(
                _replicas_field(demand),
                f"only {placed} of {demand.max_replicas} {demand.deployment} replicas fit on the node types that can "
                f"hold them ({names}) at their max workers: raise those (maxReplicas / max_workers) or lower "
                f"{_replicas_field(demand).rsplit('.', 1)[-1]}",
            )
        )
    return problems


def _advertise_fix(cluster: Cluster, node: NodeType, demand: Demand) -> str:
    missing = shortfall(demand.packed, node.advertised)
    accelerators = {k: 1.0 for k in missing if k.startswith("accelerator_type:")}
    fixes = []
    if accelerators and cluster.kind == "launcher":
        fixes.append(f"declare {', '.join(accelerators)}: 1 in its resources")
    elif accelerators:
        fixes.append(f"declare it in rayStartParams: resources: '{dump_resources(accelerators)}'")
    if any(k not in accelerators for k in missing):
        fixes.append("give the group the CPUs/GPUs the replica asks for")
    if any(node.advertised_labels.get(k) != v for k, v in demand.label_selector.items()):
        fixes.append("put the labels in the group's `labels` field (the autoscaler ignores rayStartParams labels)")
    return "; ".join(fixes)


def launcher_declared(demands: list[Demand], placement: Placement, cluster: Cluster) -> list[Problem]:
    """A launcher node type that leaves its CPUs, GPUs or accelerator to `ray up`'s EC2 look-up."""
    if cluster.kind != "launcher":
        return []
    declared = cluster.extra.get("declared", {})
    problems = []
    for node in cluster.node_types:
        needed: set[str] = set()
        for demand in demands:
            if node.name in placement.placed.get(demand.deployment, []):
                needed |= {k for k in demand.packed if k in ("CPU", "GPU") or k.startswith("accelerator_type:")}
        left = sorted(needed - set(declared.get(node.name, {})))
        if left and not node.head:
            problems.append(
                warning(
                    f"available_node_types.{node.name}.resources",
                    f"does not declare {', '.join(left)}: the autoscaler knows them only if `ray up` could read the "
                    "instance type from the cloud (it carries on with a warning when it cannot); declare them",
                )
            )
    return problems

"""``glimp-ray check``: everything about a config and a cluster manifest that can be known without a
GPU, a running cluster or the model hub.

Per application: the schema (Ray's ``ServeDeploySchema`` and ``deployments.config.AppConfig``),
top-k glimpses a vLLM small model cannot give, the HF engine's device against the GPUs its pool
holds, accelerator names Ray detects, placement of every replica up to ``max_replicas`` on the
manifest's node types and whether the autoscaler can add the nodes they need, each pool's weights
and KV cache on its GPU type, the engine's package in the image, and the pods against the
machines they run on.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from glimp_ray.config import ModelConfig, parse_config
from glimp_ray.hardware import GPUType, gpus_named
from glimp_ray.preflight.image import Image, read_image
from glimp_ray.preflight.manifests import Cluster, NodeType, load_cluster, read_yaml, serve_config_of
from glimp_ray.preflight.memory import PoolMemory, check_pool_memory, weights_gib
from glimp_ray.preflight.placement import Demand, Placement, demand_of, place, why_not
from glimp_ray.preflight.pods import check_pods
from glimp_ray.preflight.report import Problem, Report, Row, error, warning
from glimp_ray.preflight.rules import Pools, accelerator_names, devices, router_top_k, top_k
from glimp_ray.preflight.scaling import launcher_declared, placement_problems

APP_IMPORT = "deployments.app:build_app"
_OVERRIDABLE = (
    "num_replicas",
    "autoscaling_config",
    "ray_actor_options",
    "placement_group_bundles",
    "placement_group_strategy",
    "placement_group_bundle_label_selector",
)


def check_path(
    config: str | Path, cluster: str | Path | None = None, dockerfile: str | Path | None = None
) -> list[Report]:
    """Check a Serve config (or a RayService, which carries one) against ``cluster``, a KubeRay or
    cluster launcher manifest (a RayService is its own cluster unless one is given)."""
    try:
        import ray.serve  # noqa: F401  (the schema, deployment options and KubeRay's reading are Ray's)
    except ImportError:
        raise ValueError("glimp-ray check needs Ray Serve: pip install 'glimp-ray[serve]'") from None
    path = Path(config)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    carried = serve_config_of(data)
    if carried is not None:
        cluster = cluster or path
        data = carried
    nodes = load_cluster(cluster) if cluster else None
    image_path = Path(dockerfile) if dockerfile else (nodes.dockerfile if nodes else None)
    image = read_image(image_path) if image_path else None
    if "applications" not in data:
        return [_check_in_process(data, str(path))]
    reports = [check_application(app, nodes, image, str(path)) for app in data["applications"] or []]
    if not reports:
        reports = [Report(f"{path}: no applications")]
    reports[0].problems[:0] = _serve_schema(data)
    return reports


def _serve_schema(data: dict[str, Any]) -> list[Problem]:
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        return [error(_loc(e["loc"]), e["msg"]) for e in exc.errors()]
    return []


def _loc(loc: tuple[Any, ...], prefix: str = "") -> str:
    return prefix + (".".join(str(part) for part in loc) or "(top level)")


def _check_in_process(data: dict[str, Any], source: str) -> Report:
    report = Report(f"in-process config {source} (no Serve application: schema, top_k)")
    data = copy.deepcopy(data)
    report.problems += top_k(data)
    try:
        parse_config(data, source)
    except ValueError as exc:
        report.problems.append(error("config", str(exc)))
    return report


def check_application(app: dict[str, Any], cluster: Cluster | None, image: Image | None, source: str) -> Report:
    """Check one Serve application of glimp-ray (``import_path: deployments.app:build_app``)."""
    from deployments.config import AppConfig

    name = app.get("name", "default")
    where = "without a cluster (placement, autoscaling, image and pods not checked: --cluster)"
    if cluster is not None:
        where = f"on {cluster.source} ({cluster.kind}: {', '.join(t.name for t in cluster.node_types)})"
    report = Report(f"application {name} of {source} {where}")
    if app.get("import_path") != APP_IMPORT:
        report.problems.append(warning("import_path", f"{app.get('import_path')} is not {APP_IMPORT}: not checked"))
        return report
    args = copy.deepcopy(app.get("args") or {})
    report.problems += top_k(args)
    report.problems += router_top_k(app, args)
    try:
        config = AppConfig.model_validate(args)
    except ValidationError as exc:
        report.problems += [error(_loc(e["loc"], "args."), e["msg"]) for e in exc.errors()]
        return report
    pools = {"small": (config.small, config.serving.small), "large": (config.large, config.serving.large)}
    report.problems += devices(pools)
    overrides = {d.get("name"): d for d in app.get("deployments") or []}
    demands = [
        demand_of(f"serving.{which}", _override(pool.deployment_options(f"{which.title()}Pool", model), overrides))
        for which, (model, pool) in pools.items()
    ]
    demands.append(demand_of("serving.router", _override(config.serving.router_options(), overrides)))
    named, blocked = accelerator_names(pools, cluster)
    report.problems += named
    placement = place(demands, cluster) if cluster else None
    if cluster is not None and placement is not None:
        report.problems += placement_problems(demands, placement, cluster, blocked)
        report.problems += launcher_declared(demands, placement, cluster)
    memory: dict[str, PoolMemory] = {}
    for which, (model, pool) in pools.items():
        demand = demands[list(pools).index(which)]
        if demand.gpus == 0 or demand.deployment in blocked:
            continue
        gpu = _pool_gpu(which, demand, cluster, placement, report)
        if gpu is not None:
            found, problems = check_pool_memory(which, model, pool.num_gpus, gpu)
            report.problems += problems
            if found is not None:
                memory[demand.deployment] = found
    if cluster is not None:
        report.problems += _image(config.small, config.large, cluster, image)
        assert placement is not None
        report.problems += check_pods(cluster, _weights_on(pools, demands, placement, cluster))
    for demand in demands:
        placed = placement.placed.get(demand.deployment, []) if placement else []
        row = Row(demand.deployment, max_replicas=demand.max_replicas, gpus=demand.gpus)
        if placement is not None:
            row.fit, row.node_type = len(placed), ",".join(dict.fromkeys(placed)) or "(none)"
        found = memory.get(demand.deployment)
        if found is not None:
            row.gpu = f"{found.gpu.name} {found.gpu.memory_gib:g} GiB"
            row.kv_tokens, row.contexts, row.max_num_seqs = found.kv_tokens, found.contexts, found.max_num_seqs
        report.rows.append(row)
    return report


def _override(options: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deployment's options with the config file's ``deployments:`` entry applied, as Serve does."""
    entry = overrides.get(options["name"]) or {}
    return {**options, **{k: entry[k] for k in _OVERRIDABLE if k in entry}}


def _pool_gpu(
    which: str, demand: Demand, cluster: Cluster | None, placement: Placement | None, report: Report
) -> GPUType | None:
    """The GPU type a pool's memory is checked on: its node type's, or its accelerator_type's."""
    if cluster is not None and placement is not None:
        names = placement.placed.get(demand.deployment) or [
            t.name for t in cluster.node_types if not why_not(demand, t)
        ]
        types = [t for t in cluster.node_types if t.name in names]
        for node in types:
            if node.gpu is not None:
                return node.gpu
        for node in types:
            report.problems += [warning(cluster.field_of(node), f"{note}; memory not checked") for note in node.notes]
        return None
    keys: set[str] = set().union(*(b.keys() for b in demand.bundles))
    names = [k.split(":", 1)[1] for k in keys if k.startswith("accelerator_type:")]
    gpus = gpus_named(names[0]) if names else []
    if not gpus:
        report.problems.append(
            warning(
                f"serving.{which}.accelerator_type",
                "unset or of unknown memory: the pool's GPU memory is not checked (name it, or give --cluster)",
            )
        )
        return None
    if len(gpus) > 1:
        sizes = " and ".join(f"{g.memory_gib:g}" for g in sorted(gpus, key=lambda g: g.memory_gib))
        report.problems.append(
            warning(
                f"serving.{which}.accelerator_type",
                f"Ray names {sizes} GiB {gpus[0].name}s alike: memory checked for {gpus[0].memory_gib:g} GiB; "
                "--cluster checks it on the node type's GPU",
            )
        )
    return gpus[0]


def _image(small: ModelConfig, large: ModelConfig, cluster: Cluster, image: Image | None) -> list[Problem]:
    """Finding 2: a vLLM pool's replicas import vllm."""
    if "vllm" not in {small.served().engine, large.served().engine}:
        return []
    if image is None:
        return [
            warning(
                "Dockerfile",
                f"none beside {cluster.source}: the image's packages are not checked (give --dockerfile)",
            )
        ]
    if image.has("vllm"):
        return []
    extras = ",".join(sorted(image.extras)) or "none"
    return [
        error(
            image.source,
            f"installs glimp-ray with extras [{extras}] and no vllm, while a pool has engine: vllm: every replica "
            "fails to import it; install the vllm extra (pip install '.[serve,otlp,vllm]')",
        )
    ]


def _weights_on(pools: Pools, demands: list[Demand], placement: Placement, cluster: Cluster) -> dict[str, list[float]]:
    """Node type -> weights (GiB) of the model replicas one node of it holds at most."""
    found: dict[str, list[float]] = {}
    for which, (model, _) in pools.items():
        demand = demands[list(pools).index(which)]
        weights = weights_gib(model.served())
        if weights is None or demand.gpus == 0:
            continue
        for node in cluster.node_types:
            placed = placement.placed.get(demand.deployment, []).count(node.name)
            if placed:
                per_node = min(placed, _per_node(demand, node))
                found.setdefault(node.name, []).extend([weights] * per_node)
    return found


def _per_node(demand: Demand, node: NodeType) -> int:
    counts = [node.resources.get(k, 0.0) / v for k, v in demand.packed.items() if v > 0]
    return max(int(math.floor(min(counts) + 1e-9)), 1) if counts else 1

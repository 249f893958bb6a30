"""Node types of a cluster manifest: a KubeRay RayService / RayCluster or a Ray cluster launcher YAML.

Each node type says what a running node of it offers Ray (CPUs, GPUs, the ``accelerator_type:<NAME>``
resource Ray detects from the GPU, declared resources, labels) and, separately, what the
autoscaler knows of a node it has not started yet (``advertised``): for KubeRay that is exactly
what Ray's own KubeRay autoscaler derives from the group spec (CPU, GPU, memory, ``rayStartParams``
resources, the group's ``labels``), never a detected accelerator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glimp_ray.hardware import GIB, GKE_ACCELERATORS, GPU_MEMORY, MACHINES, GPUType, Machine

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
INSTANCE_LABEL = "node.kubernetes.io/instance-type"
HF_CACHE_DEFAULT = "/home/ray/.cache/huggingface"


@dataclass(frozen=True)
class PodSpec:
    """The Ray container of a KubeRay group's pods, as far as sizing goes."""

    cpu_request: float | None
    memory_request_gib: float | None
    ephemeral_request_gib: float | None
    mounts: tuple[str, ...]  # container paths with a volume mounted
    volume_sizes_gib: dict[str, float]  # mount path -> emptyDir sizeLimit, where given
    env: dict[str, str]


@dataclass(frozen=True)
class NodeType:
    """One kind of node the cluster has or can add."""

    name: str
    head: bool
    min_workers: int  # nodes present from the start (the head: 1)
    max_workers: int
    resources: dict[str, float]  # a running node's Ray resources
    labels: dict[str, str]  # a running node's Ray labels
    advertised: dict[str, float]  # what the autoscaler knows before it starts one
    advertised_labels: dict[str, str]
    gpu: GPUType | None = None
    memory_gib: float | None = None
    machine: Machine | None = None
    pod: PodSpec | None = None
    notes: tuple[str, ...] = ()  # what the reader could not tell (e.g. an unknown GPU type)


@dataclass(frozen=True)
class Cluster:
    """A parsed manifest."""

    source: str
    kind: str  # RayService, RayCluster or launcher
    node_types: list[NodeType]
    serve_config: dict[str, Any] | None = None  # a RayService's serveConfigV2
    dockerfile: Path | None = None  # the Dockerfile beside the manifest, if any
    extra: dict[str, Any] = field(default_factory=dict)

    def field_of(self, node: NodeType) -> str:
        """Where ``node`` is written in the manifest, for problem lines."""
        if self.kind == "launcher":
            return f"available_node_types.{node.name}"
        return "headGroupSpec" if node.head else f"workerGroupSpecs[{node.name}]"


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; ``ValueError`` naming the file when it cannot be read."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def load_cluster(path: str | Path) -> Cluster:
    """Read a manifest into its node types (``ValueError`` naming what is missing)."""
    path = Path(path)
    data = read_yaml(path)
    dockerfile = path.parent / "Dockerfile"
    found = dockerfile if dockerfile.is_file() else None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        if data.get("kind") in ("RayService", "RayCluster"):
            return _kuberay(data, str(path), found)
        if "available_node_types" in data:
            return _launcher(data, str(path), found)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: a node type lacks {exc} (or it is malformed)") from None
    raise ValueError(f"{path}: neither a KubeRay RayService/RayCluster nor a Ray cluster launcher config")


def serve_config_of(data: dict[str, Any]) -> dict[str, Any] | None:
    """The Serve config a RayService carries (its ``serveConfigV2``), else ``None``."""
    if data.get("kind") != "RayService":
        return None
    text = data.get("spec", {}).get("serveConfigV2")
    return yaml.safe_load(text) if isinstance(text, str) else None


# --- KubeRay --------------------------------------------------------------------------


def _kuberay(data: dict[str, Any], source: str, dockerfile: Path | None) -> Cluster:
    from ray.autoscaler._private.kuberay.autoscaling_config import _node_type_from_group_spec

    spec = data.get("spec", {})
    cluster = spec.get("rayClusterConfig", spec) if data["kind"] == "RayService" else spec
    if "headGroupSpec" not in cluster:
        raise ValueError(f"{source}: no headGroupSpec")
    groups = [(cluster["headGroupSpec"], True), *((g, False) for g in cluster.get("workerGroupSpecs", []))]
    node_types = []
    for group, head in groups:
        name = "head" if head else group["groupName"]
        autoscaler = _node_type_from_group_spec(group, is_head=head)  # the KubeRay autoscaler's own view
        node_types.append(_kuberay_node_type(name, group, head, autoscaler))
    return Cluster(source, data["kind"], node_types, serve_config_of(data), dockerfile)


def _kuberay_node_type(name: str, group: dict[str, Any], head: bool, autoscaler: dict[str, Any]) -> NodeType:
    pod_spec = group["template"]["spec"]
    selector = pod_spec.get("nodeSelector") or {}
    machine = MACHINES.get(selector.get(INSTANCE_LABEL, ""))
    notes: list[str] = []
    if INSTANCE_LABEL in selector and machine is None:
        notes.append(f"machine type {selector[INSTANCE_LABEL]!r} is not in glimp_ray.hardware.MACHINES")
    gpu = _gpu_of(selector.get(ACCELERATOR_LABEL), machine, notes)
    advertised = {k: float(v) for k, v in autoscaler["resources"].items()}
    advertised_labels = dict(autoscaler.get("labels") or {})
    labels = {**_labels_param(group.get("rayStartParams", {}).get("labels")), **advertised_labels}
    labels["ray.io/node-group"] = "headgroup" if head else name
    resources = {k: v for k, v in advertised.items() if k != "memory"}
    if resources.get("GPU", 0) > 0:
        if gpu is not None:
            resources[f"accelerator_type:{gpu.name}"] = 1.0  # Ray detects it on the node
            labels["ray.io/accelerator-type"] = gpu.name
        else:
            notes.append(f"GPU type unknown: name it with nodeSelector {ACCELERATOR_LABEL} or {INSTANCE_LABEL}")
    container = pod_spec["containers"][0]
    memory = advertised.get("memory")
    return NodeType(
        name=name,
        head=head,
        min_workers=1 if head else int(autoscaler["min_workers"]),
        max_workers=1 if head else int(autoscaler["max_workers"]),
        resources=resources,
        labels=labels,
        advertised=advertised,
        advertised_labels=advertised_labels,
        gpu=gpu,
        memory_gib=memory / GIB if memory else None,
        machine=machine,
        pod=_pod(container, pod_spec),
        notes=tuple(notes),
    )


def _gpu_of(accelerator: str | None, machine: Machine | None, notes: list[str]) -> GPUType | None:
    if accelerator is not None:
        if accelerator not in GKE_ACCELERATORS:
            notes.append(f"GKE accelerator {accelerator!r} is not in glimp_ray.hardware.GKE_ACCELERATORS")
            return None
        return GPU_MEMORY[GKE_ACCELERATORS[accelerator]]
    return machine.gpu_type if machine else None


def _labels_param(text: str | None) -> dict[str, str]:
    """``rayStartParams.labels``: ``"k=v,k2=v2"`` (what ``ray start --labels`` takes)."""
    if not text:
        return {}
    pairs = (item.split("=", 1) for item in str(text).split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


def _quantity(value: Any) -> float | None:
    if value is None:
        return None
    from ray.autoscaler._private.kuberay.utils import parse_quantity

    return float(parse_quantity(str(value)))


def _pod(container: dict[str, Any], pod_spec: dict[str, Any]) -> PodSpec:
    requests = {**(container.get("resources", {}).get("limits") or {})}
    requests.update(container.get("resources", {}).get("requests") or {})  # requests, else limits (K8s)
    memory = _quantity(requests.get("memory"))
    ephemeral = _quantity(requests.get("ephemeral-storage"))
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    mounts, sizes = [], {}
    for mount in container.get("volumeMounts") or []:
        mounts.append(mount["mountPath"])
        size = (volumes.get(mount["name"], {}).get("emptyDir") or {}).get("sizeLimit")
        if size is not None:
            sizes[mount["mountPath"]] = (_quantity(size) or 0) / GIB
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}
    return PodSpec(
        cpu_request=_quantity(requests.get("cpu")),
        memory_request_gib=memory / GIB if memory is not None else None,
        ephemeral_request_gib=ephemeral / GIB if ephemeral is not None else None,
        mounts=tuple(mounts),
        volume_sizes_gib=sizes,
        env=env,
    )


# --- Ray cluster launcher ------------------------------------------------------------


def _launcher(data: dict[str, Any], source: str, dockerfile: Path | None) -> Cluster:
    head_name = data.get("head_node_type")
    node_types = []
    for name, spec in data["available_node_types"].items():
        config = spec.get("node_config") or {}
        instance = config.get("InstanceType") or config.get("machineType") or ""
        machine = MACHINES.get(instance)
        notes = [] if machine else [f"instance type {instance!r} is not in glimp_ray.hardware.MACHINES"]
        declared = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        # What `ray up` fills in from the provider's instance description (AWS), when that call works.
        filled: dict[str, float] = {}
        gpu = machine.gpu_type if machine else None
        if machine is not None:
            filled["CPU"] = machine.vcpus
            if machine.gpus:
                filled["GPU"] = machine.gpus
                if gpu is not None:
                    filled[f"accelerator_type:{gpu.name}"] = 1.0
        resources = {**filled, **declared}
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        running_labels = dict(labels)
        if gpu is not None and resources.get("GPU", 0) > 0:
            running_labels["ray.io/accelerator-type"] = gpu.name
        head = name == head_name
        node_types.append(
            NodeType(
                name=name,
                head=head,
                min_workers=1 if head else int(spec.get("min_workers", 0)),
                max_workers=1 if head else int(spec.get("max_workers", data.get("max_workers", 0))),
                resources=resources,
                labels=running_labels,
                advertised=resources,
                advertised_labels=labels,
                gpu=gpu,
                memory_gib=machine.memory_gib if machine else None,
                machine=machine,
                notes=tuple(notes),
                pod=None,
            )
        )
    declared_by = {t.name: dict(data["available_node_types"][t.name].get("resources") or {}) for t in node_types}
    extra = {"declared": declared_by, "docker": data.get("docker") or {}}
    return Cluster(source, "launcher", node_types, None, dockerfile, extra)


def dump_resources(resources: dict[str, float]) -> str:
    """Resources as KubeRay's ``rayStartParams.resources`` wants them: ``'"{\\"accelerator_type:L4\\": 1}"'``."""
    text = json.dumps({k: int(v) for k, v in resources.items()})
    return '"' + text.replace('"', '\\"') + '"'

"""The nodes under Ray: a KubeRay pod against the machine it lands on, and the model cache.

GKE keeps part of every node for itself (``glimp_ray.hardware.gke_allocatable``) and its system
pods (logging, metrics, the GPU device plugin) request some of the rest: a pod asking for about
all of a machine's memory is never scheduled. Models download into ``HF_HOME``; without a volume
there, every pod writes tens of GB into its container layer with no ``ephemeral-storage`` request.
"""

from __future__ import annotations

from glimp_ray.hardware import gke_allocatable
from glimp_ray.preflight.manifests import HF_CACHE_DEFAULT, Cluster, NodeType
from glimp_ray.preflight.report import Problem, error, warning

# What GKE's own system pods request on a GPU node, at most (fluentbit, gke-metrics-agent,
# kube-proxy, the NVIDIA device plugin, pdcsi): a conservative allowance, not a published figure.
SYSTEM_PODS_CPU = 0.5
SYSTEM_PODS_GIB = 1.0
# A vLLM replica's host memory besides the weights it reads (Ray worker, engine core, tokenizer).
REPLICA_HOST_GIB = 4.0


def check_pods(cluster: Cluster, weights_on: dict[str, list[float]]) -> list[Problem]:
    """``weights_on``: node type name -> weights (GiB) of each model replica placed on one node of it."""
    problems: list[Problem] = []
    for node in cluster.node_types:
        where = cluster.field_of(node)
        weights = weights_on.get(node.name, [])
        if node.pod is not None:
            problems += _pod_fits_machine(node, where)
            problems += _kuberay_cache(node, where, weights)
        if weights and node.memory_gib is not None:
            need = sum(weights) + REPLICA_HOST_GIB * len(weights)
            if node.memory_gib < need:
                problems.append(
                    warning(
                        f"{where}.memory",
                        f"{node.memory_gib:.0f} GiB for model replicas that read {sum(weights):.0f} GiB of weights "
                        f"(about {need:.0f} GiB with their processes): give the node more memory",
                    )
                )
    if cluster.kind == "launcher" and any(weights_on.values()):
        problems += _launcher_cache(cluster)
    return problems


def _pod_fits_machine(node: NodeType, where: str) -> list[Problem]:
    pod = node.pod
    assert pod is not None
    machine = node.machine
    if machine is None:
        if node.resources.get("GPU", 0) > 0:
            return [
                warning(
                    f"{where}.nodeSelector",
                    "no known machine type: the pod's requests are not checked against the node; name it with "
                    "node.kubernetes.io/instance-type",
                )
            ]
        return []
    problems = []
    if machine.gpu_type is not None and node.gpu is not None and machine.gpu_type != node.gpu:
        problems.append(
            error(
                f"{where}.nodeSelector",
                f"{machine.name} has {machine.gpu} GPUs, the accelerator label says {node.gpu.name} "
                f"{node.gpu.memory_gib:g} GiB",
            )
        )
    if node.resources.get("GPU", 0) > machine.gpus:
        problems.append(
            error(
                f"{where}.resources.limits.nvidia.com/gpu",
                f"{node.resources['GPU']:g} GPUs asked, {machine.name} has {machine.gpus}",
            )
        )
    if machine.provider != "gcp":
        return problems
    cpu, memory = gke_allocatable(machine)
    cpu_room, memory_room = cpu - SYSTEM_PODS_CPU, memory - SYSTEM_PODS_GIB
    if pod.cpu_request is not None and pod.cpu_request > cpu_room:
        problems.append(
            error(
                f"{where}.resources.requests.cpu",
                f"{pod.cpu_request:g} CPUs requested; a {machine.name} node offers pods {cpu:.2f}, about "
                f"{cpu_room:.1f} after GKE's system pods: request at most {int(cpu_room)}",
            )
        )
    if pod.memory_request_gib is not None and pod.memory_request_gib > memory_room:
        problems.append(
            error(
                f"{where}.resources.requests.memory",
                f"{pod.memory_request_gib:g}Gi requested; a {machine.name} node ({machine.memory_gib:.1f} GiB, "
                f"counting its GB as 10^9 bytes) offers pods {memory:.1f} GiB, about {memory_room:.1f} after GKE's "
                f"system pods: request at most {int(memory_room)}Gi",
            )
        )
    return problems


def _kuberay_cache(node: NodeType, where: str, weights: list[float]) -> list[Problem]:
    pod = node.pod
    assert pod is not None
    if not weights:
        return []
    cache = pod.env.get("HF_HOME", HF_CACHE_DEFAULT).rstrip("/")
    mount = next((m for m in pod.mounts if cache == m.rstrip("/") or cache.startswith(m.rstrip("/") + "/")), None)
    need = sum(weights)
    if mount is None:
        return [
            warning(
                f"{where}.volumeMounts",
                f"no volume at HF_HOME ({cache}): each pod downloads {need:.0f} GiB of weights into its container "
                "layer; mount a volume there (emptyDir with an ephemeral-storage request, or a PVC)",
            )
        ]
    if mount in pod.volume_sizes_gib:  # an emptyDir: node storage, to be requested
        if pod.ephemeral_request_gib is None:
            return [
                warning(
                    f"{where}.resources.requests.ephemeral-storage",
                    f"the model cache at {mount} is an emptyDir: request ephemeral-storage for its "
                    f"{need:.0f} GiB of weights",
                )
            ]
        if pod.ephemeral_request_gib < need or pod.volume_sizes_gib[mount] < need:
            return [
                warning(
                    f"{where}.resources.requests.ephemeral-storage",
                    f"{pod.ephemeral_request_gib:g}Gi (sizeLimit {pod.volume_sizes_gib[mount]:g}Gi) is less than "
                    f"the {need:.0f} GiB of weights cached there",
                )
            ]
    return []


def _launcher_cache(cluster: Cluster) -> list[Problem]:
    docker = cluster.extra.get("docker") or {}
    options = " ".join(str(o) for o in (docker.get("run_options") or []) + (docker.get("worker_run_options") or []))
    if "-v " in options or "--volume" in options or "--mount" in options:
        return []
    return [
        warning(
            "docker.run_options",
            "no volume for the model cache: weights download into each container; add "
            f"'-v /home/ubuntu/hf-cache:{HF_CACHE_DEFAULT}' (and a root volume large enough for them)",
        )
    ]

"""A local multi-node Ray cluster on one machine, with the two node types of a real one.

Several raylets on one host, labelled like the GPU worker groups of ``cluster/rayservice.yaml``
(``glimp/pool: small`` and ``glimp/pool: large``), so placement by ``label_selector`` can be
exercised without GPUs::

    python -m cluster.local                 # starts it and waits; Ctrl-C stops it
    RAY_ADDRESS=<printed address> serve run configs/demo-cluster.yaml

``--like MANIFEST`` adds raylets shaped like a manifest's GPU node types (logical GPUs, the
``accelerator_type:<NAME>`` resource Ray detects on such a node, labels): a GPU-shaped cluster on
which a GPU config with stand-in models deploys as it would on GPUs (docs/cluster.md, "Dry run").

Tests use :func:`start_local_cluster` (one cluster per test session).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POOL_LABEL = "glimp/pool"


@dataclass(frozen=True)
class NodeShape:
    """What a Ray node of one node type declares: logical CPUs and GPUs, resources (the
    ``accelerator_type:<NAME>`` Ray detects on a GPU node among them) and labels."""

    name: str
    cpus: float
    gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    count: int = 1


def gpu_node_shapes(manifest: str | Path, per_type: int = 2) -> list[NodeShape]:
    """A manifest's GPU node types (RayService, RayCluster or launcher YAML, read by
    :mod:`glimp_ray.preflight`) as local raylets: at most ``per_type`` of each, with the resources
    a real node of the type runs with (the detected accelerator among them) and its labels."""
    from glimp_ray.preflight import load_cluster

    shapes = []
    for node in load_cluster(manifest).node_types:
        if not node.resources.get("GPU"):
            continue  # the head node stands in for CPU-only types
        custom = {k: v for k, v in node.resources.items() if k not in ("CPU", "GPU", "memory")}
        shapes.append(
            NodeShape(
                name=node.name,
                cpus=node.resources.get("CPU", 1.0),
                gpus=int(node.resources["GPU"]),
                resources=custom,
                labels={k: v for k, v in node.labels.items() if not k.startswith("ray.io/")},  # Ray sets its own
                count=min(per_type, max(node.max_workers, 1)),
            )
        )
    if not shapes:
        raise ValueError(f"{manifest} has no GPU node type")
    return shapes


def add_node_types(cluster: Any, shapes: Iterable[NodeShape], object_store_mib: int = 100) -> list[Any]:
    """Add ``count`` raylets of each shape to a running local ``Cluster`` (a GPU-shaped cluster
    on a machine without GPUs: the GPUs are logical); returns the nodes, for ``remove_node``."""
    nodes = []
    for shape in shapes:
        for _ in range(shape.count):
            nodes.append(
                cluster.add_node(
                    num_cpus=shape.cpus,
                    num_gpus=shape.gpus,
                    resources=dict(shape.resources),
                    labels=dict(shape.labels),
                    object_store_memory=object_store_mib << 20,
                )
            )
    cluster.wait_for_nodes()
    return nodes


def start_local_cluster(
    head_cpus: float = 4,
    small_nodes: int = 1,
    large_nodes: int = 1,
    worker_cpus: float = 2,
    temp_dir: str | None = None,
    connect: bool = True,
) -> Any:
    """Start a head node (no pool label) and labelled small and large worker nodes.

    Returns the ``ray.cluster_utils.Cluster``; call its ``shutdown()`` (after ``ray.shutdown()``).
    With ``connect``, this process joins it as the driver.
    """
    import ray
    from ray._common.utils import get_default_ray_temp_dir

    from deployments import serve_env

    serve_env.apply()  # the raylets started here pass it to every Ray process
    from ray.cluster_utils import Cluster

    # Ray's Cluster writes the head's address to <system temp>/ray/ray_current_cluster whatever
    # temp_dir says; on a fresh machine that folder does not exist yet.
    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
    head: dict[str, Any] = {"num_cpus": head_cpus, "include_dashboard": False}
    if temp_dir:
        head["temp_dir"] = temp_dir
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for pool, count in (("small", small_nodes), ("large", large_nodes)):
            for _ in range(count):
                cluster.add_node(num_cpus=worker_cpus, labels={POOL_LABEL: pool})
        cluster.wait_for_nodes()
        if connect:
            ray.init(address=cluster.address)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a local Ray cluster with labelled small/large nodes.")
    parser.add_argument("--head-cpus", type=float, default=4)
    parser.add_argument("--small-nodes", type=int, default=1)
    parser.add_argument("--large-nodes", type=int, default=1)
    parser.add_argument("--worker-cpus", type=float, default=2, help="Logical CPUs of each worker node.")
    parser.add_argument(
        "--like",
        metavar="MANIFEST",
        help="also add raylets shaped like the manifest's GPU node types (logical GPUs, the accelerator Ray "
        "detects, labels), e.g. cluster/rayservice.yaml: a GPU-shaped dry run (docs/cluster.md)",
    )
    parser.add_argument("--per-type", type=int, default=2, help="With --like: raylets of each GPU node type.")
    args = parser.parse_args(argv)
    shapes = gpu_node_shapes(args.like, args.per_type) if args.like else []
    cluster = start_local_cluster(
        args.head_cpus,
        args.small_nodes,
        args.large_nodes,
        args.worker_cpus,
        temp_dir=tempfile.mkdtemp(prefix="glimp-ray-cluster-"),
        connect=False,
    )
    add_node_types(cluster, shapes)
    print(f"Ray cluster at {cluster.address}: head + {args.small_nodes} small + {args.large_nodes} large node(s)")
    for shape in shapes:
        print(f"  + {shape.count} x {shape.name}: {shape.cpus:g} CPUs, {shape.gpus} GPUs, {shape.resources}")
    print(f"  RAY_ADDRESS={cluster.address} serve run configs/demo-cluster.yaml")
    print("Ctrl-C stops it.", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()

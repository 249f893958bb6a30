"""Node types read from KubeRay and cluster launcher manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from glimp_ray.preflight.manifests import dump_resources, load_cluster
from tests.preflight.conftest import LAUNCHER, RAYSERVICE, ROOT


def test_rayservice_node_types_as_running_nodes_and_as_the_autoscaler_sees_them() -> None:
    cluster = load_cluster(ROOT / RAYSERVICE)
    assert cluster.kind == "RayService" and cluster.dockerfile == ROOT / "cluster" / "Dockerfile"
    assert cluster.serve_config is not None and cluster.serve_config["applications"][0]["name"] == "glimp"
    types = {t.name: t for t in cluster.node_types}
    head, small, large = types["head"], types["small-gpu"], types["large-gpu"]
    assert head.head and (head.min_workers, head.max_workers) == (1, 1) and head.resources == {"CPU": 4.0}
    assert (small.min_workers, small.max_workers) == (1, 8)
    assert small.resources == {"CPU": 6.0, "GPU": 1.0, "accelerator_type:L4": 1.0}
    assert small.advertised == {"CPU": 6.0, "GPU": 1.0, "memory": 24 * 2**30, "accelerator_type:L4": 1.0}
    assert small.labels == {"glimp/pool": "small", "ray.io/node-group": "small-gpu", "ray.io/accelerator-type": "L4"}
    assert small.advertised_labels == {"glimp/pool": "small"}
    assert small.gpu is not None and (small.gpu.name, small.gpu.memory_gib) == ("L4", 22.49)
    assert small.machine is not None and small.machine.name == "g2-standard-8"
    assert large.gpu is not None and (large.gpu.name, large.gpu.memory_gib) == ("A100", 80.0)
    assert large.resources["GPU"] == 2 and large.resources["accelerator_type:A100"] == 1
    assert small.pod is not None and small.pod.memory_request_gib == 24 and small.pod.ephemeral_request_gib == 30
    assert small.pod.mounts == ("/home/ray/.cache/huggingface",)


def test_dump_resources_is_what_kuberays_autoscaler_reads() -> None:
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

    text = dump_resources({"accelerator_type:L4": 1, "x": 2})
    assert _get_custom_resources({}, {"resources": text}, "g") == {"accelerator_type:L4": 1, "x": 2}


def test_launcher_node_types_from_instance_types_and_declared_resources() -> None:
    cluster = load_cluster(ROOT / LAUNCHER)
    types = {t.name: t for t in cluster.node_types}
    small, large = types["small_gpu"], types["large_gpu"]
    assert small.resources == {"CPU": 8.0, "GPU": 1.0, "accelerator_type:L4": 1.0}
    assert large.gpu is not None and large.gpu.memory_gib == 80 and large.resources["GPU"] == 8
    assert (large.min_workers, large.max_workers) == (1, 2) and large.labels["glimp/pool"] == "large"
    assert cluster.extra["declared"]["small_gpu"] == {"CPU": 8, "GPU": 1, "accelerator_type:L4": 1}


def test_unknown_manifest_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("kind: Deployment\n")
    with pytest.raises(ValueError, match="neither a KubeRay"):
        load_cluster(path)
    path.write_text("kind: RayCluster\nspec: {headGroupSpec: {rayStartParams: {}}}\n")
    with pytest.raises(ValueError, match="lacks"):
        load_cluster(path)

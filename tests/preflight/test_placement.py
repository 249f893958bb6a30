"""Replica demands from deployment options, label selectors and first-fit placement."""

from __future__ import annotations

from glimp_ray.preflight.manifests import Cluster, NodeType
from glimp_ray.preflight.placement import Demand, demand_of, labels_match, place


def node(name: str, resources: dict[str, float], labels: dict[str, str], low: int, high: int) -> NodeType:
    return NodeType(name, False, low, high, resources, labels, advertised=resources, advertised_labels=labels)


def test_labels_match_rays_operators() -> None:
    labels = {"pool": "large", "zone": "b"}
    assert labels_match({"pool": "large"}, labels) and not labels_match({"pool": "small"}, labels)
    assert labels_match({"pool": "!small"}, labels) and not labels_match({"pool": "!large"}, labels)
    assert labels_match({"zone": "in(a, b)"}, labels) and labels_match({"zone": "!in(c,d)"}, labels)
    assert not labels_match({"missing": "x"}, labels) and labels_match({"missing": "!x"}, labels)


def test_demand_of_a_sharded_pool_packs_its_bundles() -> None:
    from deployments.config import PoolDeployment
    from glimp_ray.config import ModelConfig

    pool = PoolDeployment(num_cpus=8, num_gpus=2, accelerator_type="A100", label_selector={"glimp/pool": "large"})
    model = ModelConfig(model="m", engine="vllm", tensor_parallel_size=2)
    demand = demand_of("serving.large", pool.deployment_options("LargePool", model))
    assert demand.packed == {"GPU": 2.0, "CPU": 8.0, "accelerator_type:A100": 0.002}
    assert demand.label_selector == {"glimp/pool": "large"} and (demand.min_replicas, demand.max_replicas) == (1, 1)
    plain = demand_of("serving.small", PoolDeployment(num_gpus=1, accelerator_type="L4").deployment_options("S"))
    assert plain.packed == {"CPU": 1.0, "GPU": 1.0, "accelerator_type:L4": 0.001}


def test_place_fills_started_nodes_then_adds_those_the_autoscaler_sees() -> None:
    gpu = {"CPU": 6.0, "GPU": 1.0, "accelerator_type:L4": 1.0}
    unseen = {"CPU": 6.0, "GPU": 1.0}  # a group that does not advertise its accelerator
    demand = Demand("S", "serving.small", ({"CPU": 4.0, "GPU": 1.0, "accelerator_type:L4": 0.001},), {}, 1, 3)
    seen_cluster = Cluster("m", "RayCluster", [node("g", gpu, {}, 1, 3)])
    assert place([demand], seen_cluster).placed == {"S": ["g", "g", "g"]}
    hidden = NodeType("g", False, 1, 3, gpu, {}, advertised=unseen, advertised_labels={})
    assert place([demand], Cluster("m", "RayCluster", [hidden])).placed == {"S": ["g"]}

"""The cluster manifests: valid YAML, a serve config Ray accepts, pools placed on their node types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.serve")

from deployments.autoscaling import RoutingRatioPolicy  # noqa: E402
from deployments.config import AppConfig  # noqa: E402

ROOT = Path(__file__).parent.parent.parent
CLUSTER = ROOT / "cluster"


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def check_application(app: dict[str, Any]) -> AppConfig:
    """What a deploy needs beyond Ray's schema: our args, the policy and its kwargs."""
    from ray._common.utils import import_attr

    config = AppConfig.model_validate(app["args"])
    policy = app["autoscaling_policy"]
    assert import_attr(policy["policy_function"].replace(":", ".")) is RoutingRatioPolicy
    RoutingRatioPolicy(**policy.get("policy_kwargs", {}))  # the kwargs are valid
    for pool in (config.serving.small, config.serving.large):
        assert pool.autoscaling_config is not None  # the app-level policy sees only autoscaled pools
    return config


def test_every_manifest_is_valid_yaml() -> None:
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {f.name for f in files} == {"cluster.yaml", "rayservice.yaml"}
    launcher, service = (yaml.safe_load(path.read_text()) for path in files)
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(launcher)
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(service)


def test_rayservice_serve_config_validates_and_places_each_pool_on_its_group() -> None:
    from ray.serve.schema import ServeDeploySchema

    service = load("rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    assert [a.import_path for a in schema.applications] == ["deployments.app:build_app"]
    config = check_application(serve_config["applications"][0])

    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for pool in (config.serving.small, config.serving.large):
        # Exactly one group carries the pool's labels; it has the GPUs and room for max_replicas.
        (group,) = [g for g in groups.values() if pool.label_selector.items() <= g.get("labels", {}).items()]
        container = group["template"]["spec"]["containers"][0]
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= pool.num_gpus > 0
        assert group["maxReplicas"] * gpus >= pool.autoscaling_config["max_replicas"] * pool.num_gpus
    assert set(groups["small-gpu"]["labels"].values()) != set(groups["large-gpu"]["labels"].values())


def test_rayservice_and_gpu_config_serve_the_same_application() -> None:
    service = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    config = yaml.safe_load((ROOT / "configs" / "qwen3-4b-r1-32b.yaml").read_text())
    assert service["applications"] == config["applications"]


def test_cluster_launcher_config_validates_against_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    launcher = load("cluster.yaml")
    validate_config(prepare_config(launcher))  # what `ray up` does; raises on what ray-schema.json rejects
    types = launcher["available_node_types"]
    service = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    config = AppConfig.model_validate(service["applications"][0]["args"])
    for pool in (config.serving.small, config.serving.large):
        matching = [name for name, t in types.items() if pool.label_selector.items() <= t.get("labels", {}).items()]
        assert len(matching) == 1 and matching[0] != launcher["head_node_type"]


def test_every_node_runs_serve_in_the_projects_mode() -> None:
    """deployments/serve_env.py's variables on every container and ``ray start`` of both manifests."""
    from deployments.serve_env import SERVE_ENV

    spec = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert SERVE_ENV.items() <= {e["name"]: e["value"] for e in container["env"]}.items()
    launcher = load("cluster.yaml")
    commands = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert all(f"{key}={value}" in command for key, value in SERVE_ENV.items())


def test_gpu_groups_advertise_the_accelerator_their_pool_asks_for() -> None:
    """KubeRay's autoscaler knows a group's resources only from its spec (Ray's own reading of it
    here): each GPU group must show the accelerator_type its pool's replicas ask for, or it never
    adds a pod for them; the launcher's GPU node types declare theirs too."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _node_type_from_group_spec

    service = load("rayservice.yaml")
    config = AppConfig.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    launcher = load("cluster.yaml")["available_node_types"]
    for pool in (config.serving.small, config.serving.large):
        resource = f"accelerator_type:{pool.accelerator_type}"
        (group,) = [g for g in groups if pool.label_selector.items() <= g["labels"].items()]
        assert _node_type_from_group_spec(group, is_head=False)["resources"][resource] == 1
        (node_type,) = [t for t in launcher.values() if pool.label_selector.items() <= t.get("labels", {}).items()]
        assert node_type["resources"][resource] == 1 and node_type["resources"]["GPU"] >= pool.num_gpus


def test_gpu_groups_mount_a_model_cache() -> None:
    service = load("rayservice.yaml")
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        home = {e["name"]: e["value"] for e in container["env"]}["HF_HOME"]
        assert home in {m["mountPath"] for m in container["volumeMounts"]}
        assert "ephemeral-storage" in container["resources"]["requests"]
    assert any("hf-cache:/home/ray/.cache/huggingface" in o for o in load("cluster.yaml")["docker"]["run_options"])

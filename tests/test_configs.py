"""Every shipped config file validates: Serve configs against Ray's schema and the app's
args model, in-process configs against GlimpConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from glimp_ray.config import parse_config
from glimp_ray.hardware import RAY_DETECTED

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path: Path) -> None:
    if path.name.startswith("gpus"):  # a GPU list for glimp-ray plan --gpus, not a serving config
        from glimp_ray.gpu_options import load_gpus

        load_gpus(path)
        return
    data = yaml.safe_load(path.read_text())
    if "applications" not in data:
        parse_config(data, str(path))
        return
    pytest.importorskip("ray")
    from ray.serve.schema import ServeDeploySchema

    from deployments.config import AppConfig

    schema = ServeDeploySchema.model_validate(data)
    assert [app.import_path for app in schema.applications] == ["deployments.app:build_app"]
    for app in data["applications"]:
        assert app["import_path"] == "deployments.app:build_app"
        config = AppConfig.model_validate(app.get("args") or {})
        for pool in (config.serving.small, config.serving.large):
            options = pool.deployment_options("Pool")
            assert options["request_router_config"].request_router_class.endswith("ConsistentHashRouter")


def test_gpu_configs_place_each_pool_on_its_node_type() -> None:
    from deployments.config import AppConfig

    for name in ("qwen3-4b-r1-32b.yaml", "r1-1.5b-r1-32b.yaml"):
        args = yaml.safe_load((CONFIGS[0].parent / name).read_text())["applications"][0]["args"]
        serving = AppConfig.model_validate(args).serving
        assert serving.small.label_selector == {"glimp/pool": "small"} and serving.small.num_gpus > 0
        assert serving.large.label_selector == {"glimp/pool": "large"} and serving.large.num_gpus >= 1
        config = AppConfig.model_validate(args)
        assert config.small.engine == config.large.engine == "vllm" and config.routing.entropy == "topk"
        # Names Ray detects on a GPU node (an 80 GB A100 is "A100"; "A100-80G" is never auto-added).
        assert {serving.small.accelerator_type, serving.large.accelerator_type} <= RAY_DETECTED
        options = serving.large.deployment_options("LargePool", config.large)
        actor = options["ray_actor_options"]
        tp = config.large.tensor_parallel_size
        if tp == 1:
            assert actor["label_selector"] == {"glimp/pool": "large"} and "accelerator_type" in actor
            continue
        # Sharded: a placement group per replica, a GPU bundle per shard, on the large nodes.
        assert actor["num_gpus"] == 0 and "label_selector" not in actor
        bundles = options["placement_group_bundles"]
        assert len(bundles) == tp and all(b["GPU"] == 1 for b in bundles)
        assert bundles[0]["CPU"] == serving.large.num_cpus
        assert all(f"accelerator_type:{serving.large.accelerator_type}" in b for b in bundles)
        assert options["placement_group_bundle_label_selector"] == [{"glimp/pool": "large"}]
        assert options["placement_group_strategy"] == "STRICT_PACK"


def test_tensor_parallel_pools_need_vllm_and_their_gpus() -> None:
    from deployments.config import AppConfig

    def args(engine: str, num_gpus: float) -> dict[str, object]:
        return {
            "large": {"model": "m", "engine": engine, "tensor_parallel_size": 4},
            "routing": {"entropy": "topk"},
            "serving": {"large": {"num_gpus": num_gpus}},
        }

    with pytest.raises(ValidationError, match="needs engine: vllm"):
        AppConfig.model_validate(args("hf", 0))
    with pytest.raises(ValidationError, match="num_gpus must be 0 or 4"):
        AppConfig.model_validate(args("vllm", 1))
    assert AppConfig.model_validate(args("vllm", 4)).large.tensor_parallel_size == 4

"""A GPU-shaped dry run of the shipped GPU configs.

The session's cluster gets raylets shaped like the manifest's GPU node types: their logical
GPUs, the ``accelerator_type:<NAME>`` resource Ray detects on such a node, and their labels.
Each shipped config is deployed as shipped (resources, accelerator types, label selectors,
tensor-parallel placement groups, autoscaling bounds), with stand-in models: the demo pair on
the HF engine on the CPU (``ModelConfig.stand_in``). Only Serve's timings are shortened. The
app must reach RUNNING, every replica and placement group must land on its node type, and a
request must flow through both pools.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cluster.local import add_node_types, gpu_node_shapes
from tests.deployments.serve_state import deploy_config, replica_nodes, wait_for

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIGS = {
    "qwen3-4b-r1-32b": ("configs/qwen3-4b-r1-32b.yaml", "cluster/rayservice.yaml"),
    "r1-1.5b-r1-32b": ("configs/r1-1.5b-r1-32b.yaml", "cluster/cluster.yaml"),
}
STAND_INS = {"small": "demo:small", "large": "demo:large"}
QUESTION = "Start with 12, then multiply by 7, then add 5, then subtract 9. Work modulo 100. What is the result?"


def dry_run_app(config: str, name: str) -> dict[str, Any]:
    """The config's application as shipped, renamed, with stand-in models and short Serve timings."""
    shipped = yaml.safe_load((ROOT / config).read_text())
    (app,) = shipped["applications"]
    app = copy.deepcopy(app)
    app.update(name=name, route_prefix=f"/{name}")
    for pool, stand_in in STAND_INS.items():
        app["args"][pool]["stand_in"] = stand_in
        autoscaling = app["args"]["serving"][pool].get("autoscaling_config")
        if autoscaling:
            autoscaling.update(upscale_delay_s=0, downscale_delay_s=600, metrics_interval_s=0.5, look_back_period_s=2)
    return app


def app_status(name: str) -> str:
    app = serve.status().applications.get(name)
    return "MISSING" if app is None else str(getattr(app.status, "value", app.status))


def nodes_by_id() -> dict[str, dict[str, Any]]:
    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}


@pytest.fixture(scope="module", params=list(GPU_CONFIGS))
def gpu_app(request: pytest.FixtureRequest, local_cluster: Any, serve_app: str) -> Iterator[tuple[str, str]]:
    """One shipped GPU config deployed on raylets shaped like its manifest; (name, base URL)."""
    name = request.param
    config, manifest = GPU_CONFIGS[name]
    nodes = add_node_types(local_cluster, gpu_node_shapes(ROOT / manifest))
    try:
        deploy_config([dry_run_app(config, name)])
        wait_for(lambda: app_status(name) in ("RUNNING", "DEPLOY_FAILED"), 240, f"{name} to deploy")
        assert app_status(name) == "RUNNING", serve.status().applications[name]
        yield name, f"{serve_app}/{name}"
    finally:
        serve.delete(name)
        for node in nodes:
            local_cluster.remove_node(node)


def test_every_replica_lands_on_a_gpu_node_of_its_type(gpu_app: tuple[str, str]) -> None:
    name, _ = gpu_app
    nodes = nodes_by_id()
    args = dry_run_app(GPU_CONFIGS[name][0], name)["args"]
    for deployment, pool in (("SmallPool", "small"), ("LargePool", "large")):
        placed = replica_nodes(name, deployment)
        serving = args["serving"][pool]
        assert placed, f"no {deployment} replica is alive"
        for node_id in placed:
            node = nodes[node_id]
            assert node["Labels"].get("glimp/pool") == pool
            assert node["Resources"].get("GPU", 0) >= 1  # a GPU node, not the CPU-only one
            accelerator = serving.get("accelerator_type")
            if accelerator:
                assert f"accelerator_type:{accelerator}" in node["Resources"]


def test_tensor_parallel_replicas_hold_a_placement_group_of_gpu_bundles(gpu_app: tuple[str, str]) -> None:
    name, _ = gpu_app
    args = dry_run_app(GPU_CONFIGS[name][0], name)["args"]
    tp = args["large"].get("tensor_parallel_size", 1)
    if tp == 1:
        pytest.skip(f"{name}: the large model is not sharded")
    from ray.util import placement_group_table

    nodes = nodes_by_id()
    groups = [g for g in placement_group_table().values() if g["state"] == "CREATED" and len(g["bundles"]) == tp]
    assert groups, "no placement group of the sharded replica was placed"
    for group in groups:
        assert all(bundle.get("GPU") == 1 for bundle in group["bundles"].values())
        for node_id in group["bundles_to_node_id"].values():
            assert nodes[node_id]["Labels"].get("glimp/pool") == "large"


def test_a_request_flows_through_both_pools(gpu_app: tuple[str, str]) -> None:
    name, url = gpu_app
    model = dry_run_app(GPU_CONFIGS[name][0], name)["args"]["serving"]["model_name"]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "glimp": {"return_trace": True, "threshold": 0.3},
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    trace = data["glimp"]
    assert data["choices"][0]["message"]["content"]
    assert trace["steps"] and all(step["entropy"] is not None for step in trace["steps"])  # glimpsed: small pool
    assert trace["answer"]["model"] == "large"

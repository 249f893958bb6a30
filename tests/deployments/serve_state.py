"""What the cluster tests ask Serve and Ray: deploy a config, count running replicas, find the
nodes replicas run on, and wait for a condition."""

from __future__ import annotations

import time
from typing import Any


def deploy_config(applications: list[dict[str, Any]]) -> None:
    """What ``serve deploy``/``serve run config.yaml`` do: an application-level autoscaling
    policy can only come from a config in Ray 2.60, not from ``serve.run``."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    serve_start().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))


def running(app: str, deployment: str) -> int:
    """Replicas of ``deployment`` in ``app`` that Serve reports RUNNING."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return int(status.deployments[deployment].replica_states.get("RUNNING", 0))  # type: ignore[call-overload]


def replica_nodes(app: str, deployment: str) -> list[str]:
    """The node of every live replica of ``deployment`` in ``app`` (from the GCS actor table)."""
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [
        info["Address"]["NodeID"]
        for info in actors().values()
        if info.get("Name", "").startswith(prefix) and info["State"] == "ALIVE"
    ]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)

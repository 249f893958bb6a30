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


def active(app: str, deployment: str) -> int:
    """Replicas of ``deployment`` in ``app`` that are running or on their way (STARTING, UPDATING,
    RECOVERING): the count Serve is bringing the deployment to. On a loaded machine a new
    replica can take over a minute to load its model; the count is what a scaling decision sets."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    states = status.deployments[deployment].replica_states
    return sum(int(states.get(state, 0)) for state in ("STARTING", "UPDATING", "RECOVERING", "RUNNING"))  # type: ignore[call-overload]


def replica_nodes(app: str, deployment: str) -> list[str]:
    """The node of every live replica of ``deployment`` in ``app`` (from the GCS actor table)."""
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [
        info["Address"]["NodeID"]
        for info in actors().values()
        if info.get("Name", "").startswith(prefix) and info["State"] == "ALIVE"
    ]


def wait_for(condition: Any, timeout: float, what: str, explain: Any = None) -> None:
    """Poll ``condition`` every half second; past ``timeout``, fail naming ``what`` and, with
    ``explain`` (a callable returning text), what the cluster looked like."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(0.5)


def cluster_state(app: str, log_pattern: str = "routing-ratio policy", lines: int = 20) -> str:
    """Replica states of ``app``'s deployments, each live node's free resources and the Serve
    controller's last log lines matching ``log_pattern``: what a timed-out wait shows."""
    import glob
    import os

    import ray
    from ray import serve

    out = []
    status = serve.status().applications.get(app)
    for name, deployment in (status.deployments if status else {}).items():
        out.append(f"{name}: {dict(deployment.replica_states)} {deployment.message}")
    for node in ray.nodes():
        if node["Alive"]:
            free = ray._private.state.available_resources_per_node().get(node["NodeID"], {})
            pool = node["Labels"].get("glimp/pool", "-")
            out.append(f"node {node['NodeID'][:8]} {pool}: free CPU {free.get('CPU', 0):g}")
    session = ray._private.worker._global_node.get_session_dir_path()
    matched: list[str] = []
    for path in glob.glob(os.path.join(session, "logs", "serve", "controller_*.log")):
        with open(path, errors="replace") as handle:
            matched += [line.rstrip() for line in handle if log_pattern in line]
    out += matched[-lines:]
    return "\n".join(out)

"""One model pool's replica: the step server as a Serve deployment, deployed twice."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from glimp_ray.step_server import StepServer


@serve.deployment
class ModelServer(StepServer):
    """Serves step requests for one model; sessions are pinned here by consistent hashing.
    Logs go to Serve's replica logger (its ``logging_config`` sets the level)."""

    def __init__(self, model: dict[str, Any], metrics_window_s: float = 30.0):
        context = serve.get_replica_context()
        replica = f"{context.deployment}#{context.replica_id.unique_id}"
        # A fraction of a GPU (num_gpus < 1) bounds an HF engine's default KV budget.
        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU")
        super().__init__(model, metrics_window_s, replica, logging.getLogger("ray.serve"), gpu_share=gpus)

    async def stats(self) -> dict[str, Any]:
        """Replica id, cache counters and node, for tests and debugging."""
        return {**self.counters(), "node_id": ray.get_runtime_context().get_node_id()}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Service rate (tokens/s while busy) and queue, for the routing-ratio policy."""
        return self.service_stats()

    def __del__(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.close()

"""One model pool's replica: the step server as a Serve deployment, deployed twice."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from glimp_ray.process_memory import rss_bytes
from glimp_ray.step_server import StepServer


class MemoryGauges:
    """What a replica's memory holds, as Serve metrics (tagged with the deployment and replica
    by Serve): the process's resident memory, the KV cache its sessions keep (tokens and, where
    the engine knows its bytes per token, bytes) and the sessions. RSS above the KV bytes plus the
    weights is the allocator's and the batch buffers' (docs/serving.md, "Memory")."""

    def __init__(self) -> None:
        from ray.serve.metrics import Gauge

        self.rss = Gauge("glimp_replica_rss_bytes", description="Resident memory of a model replica (bytes).")
        self.kv_tokens = Gauge("glimp_kv_cached_tokens", description="Tokens of KV cache the replica's sessions hold.")
        self.kv_bytes = Gauge("glimp_kv_cached_bytes", description="Bytes of KV cache the replica's sessions hold.")
        self.sessions = Gauge("glimp_sessions", description="Sessions (requests' KV caches) a replica holds.")

    def update(self, server: StepServer) -> None:
        rss = rss_bytes()
        if rss is not None:
            self.rss.set(rss)
        counters = server.counters()
        self.sessions.set(counters["sessions"])
        self.kv_tokens.set(counters["cached_tokens"])
        budget = getattr(server.engine, "budget", None)  # the HF engine's KVBudget; vLLM keeps its own
        if budget is not None:
            self.kv_bytes.set(counters["cached_tokens"] * budget.bytes_per_token)


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
        self.memory = MemoryGauges()
        self.memory.update(self)

    async def stats(self) -> dict[str, Any]:
        """Replica id, cache counters and node, for tests and debugging."""
        return {**self.counters(), "node_id": ray.get_runtime_context().get_node_id()}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Service rate (tokens/s while busy) and queue, for the routing-ratio policy."""
        return self.service_stats()

    def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s`` (10 s by default): the memory gauges
        are refreshed on the same beat."""
        super().check_health()
        self.memory.update(self)

    def __del__(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.close()

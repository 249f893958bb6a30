"""One model pool's replica: an engine behind a Serve deployment, deployed twice."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import serve

from glimp_ray.autoscaling import ServiceMeter
from glimp_ray.config import ModelConfig
from glimp_ray.engine.base import InvalidRequestError, StepRejected
from glimp_ray.engine.hf import HFEngine
from glimp_ray.types import StepRequest, StepResult

logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    """Serves step requests for one model; sessions are pinned here by consistent hashing."""

    def __init__(self, model: dict[str, Any], metrics_window_s: float = 30.0):
        config = ModelConfig.model_validate(model)
        self.service = ServiceMeter(metrics_window_s)
        self.engine = HFEngine.load(**config.engine_kwargs())
        context = serve.get_replica_context()
        self.engine.replica = f"{context.deployment}#{context.replica_id.unique_id}"

    async def step(self, request: StepRequest) -> StepResult | StepRejected:
        """One step call; a request the engine refuses comes back as :class:`StepRejected`."""
        try:
            result = await self.engine.step(request)
        except InvalidRequestError as exc:
            logger.warning("step refused (%s): %s", request.session_id, exc)
            return StepRejected.of(exc)
        logger.debug(
            "step %s: %s, %d tokens (%d reused, %d prefilled), queue %.3f s, model %.3f s",
            request.session_id,
            result.finish_reason,
            result.generated_tokens,
            result.reused_tokens,
            result.prefill_tokens,
            result.queue_s,
            result.model_s,
        )
        return result

    async def release(self, session_id: str) -> None:
        await self.engine.release(session_id)

    async def stats(self) -> dict[str, Any]:
        """Replica id and cache counters, for tests and debugging."""
        return {
            "replica": self.engine.replica,
            "sessions": len(self.engine.sessions),
            "cached_tokens": self.engine.sessions.cached_tokens,
            "forwarded_tokens": self.engine.forwarded_tokens,
            "generated_tokens": self.engine.generated_tokens,
            "node_id": ray.get_runtime_context().get_node_id(),
            "max_context": self.engine.max_context,
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Service rate (tokens/s while busy) and queue, for the routing-ratio policy."""
        self.service.add(time.monotonic(), self.engine.generated_tokens, self.engine.busy_s)
        stats = {"queued": float(self.engine.queued)}
        rate = self.service.rate()
        if rate is not None:
            stats["service_rate"] = rate
        return stats

    def check_health(self) -> None:
        if not self.engine.alive:
            raise RuntimeError("engine worker thread is not running")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

"""One model's server: an engine behind the step calls of a pool, with its counters.

The one server class: the Serve deployment (``deployments/model_server.py``) subclasses it, and
the batch job runs it as a Ray actor. A request the engine refuses as the client's mistake comes
back as a :class:`~glimp_ray.engine.base.StepRejected` value, so the replica does not log it as
its own failure.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from glimp_ray.config import ModelConfig
from glimp_ray.engine.base import InvalidRequestError, StepRejected
from glimp_ray.meters import ServiceMeter
from glimp_ray.step_run import StepRun, run_steps
from glimp_ray.types import StepRequest, StepResult


class StepServer:
    """Serves step requests for one model (``model`` is a :class:`ModelConfig` mapping)."""

    def __init__(
        self,
        model: dict[str, Any],
        metrics_window_s: float = 30.0,
        replica: str | None = None,
        logger: logging.Logger | None = None,
        gpu_share: float | None = None,
    ):
        config = ModelConfig.model_validate(model)
        self.logger = logger or logging.getLogger(__name__)
        self.service = ServiceMeter(metrics_window_s)
        self.max_concurrency = config.max_num_seqs or config.max_running
        self.calls = 0  # calls served: single steps and runs of steps
        self.step_model_s = 0.0  # finished steps' seconds in the model, summed (request-seconds)
        self.step_tokens = 0  # and their generated tokens
        self.engine = config.load_engine(gpu_share)
        if replica:
            self.engine.replica = replica

    async def step(self, request: StepRequest) -> StepResult | StepRejected:
        """One step call; a request the engine refuses comes back as :class:`StepRejected`."""
        self.calls += 1
        try:
            result = await self.engine.step(request)
        except InvalidRequestError as exc:
            self.logger.warning("step refused (%s): %s", request.session_id, exc)
            return StepRejected.of(exc)
        self.step_model_s += result.model_s
        self.step_tokens += result.generated_tokens
        self.logger.debug(
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

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult | StepRejected]:
        """A run of easy steps (streaming glimpse): each step streamed back as it completes; a
        step the engine refuses ends the run as a :class:`StepRejected` value."""
        self.calls += 1
        try:
            own = getattr(self.engine, "run_steps", None)  # runs inside the engine's step loop
            steps: Any = own(request, run) if own is not None else run_steps(self.engine, request, run)
            async with contextlib.aclosing(steps):  # a caller that stops reading stops the run at once
                async for result in steps:
                    self.step_model_s += result.model_s
                    self.step_tokens += result.generated_tokens
                    yield result
        except InvalidRequestError as exc:
            self.logger.warning("step refused (%s): %s", request.session_id, exc)
            yield StepRejected.of(exc)

    async def release(self, session_id: str) -> None:
        await self.engine.release(session_id)

    def counters(self) -> dict[str, Any]:
        """Replica id and cache counters, for tests and debugging."""
        return {
            "replica": self.engine.replica,
            "calls": self.calls,
            "sessions": len(self.engine.sessions),
            "cached_tokens": self.engine.sessions.cached_tokens,
            "forwarded_tokens": self.engine.forwarded_tokens,
            "generated_tokens": self.engine.generated_tokens,
            "max_context": self.engine.max_context,
        }

    def service_stats(self) -> dict[str, float]:
        """Service rate, batching (concurrency and seconds per token) and queue, for the routing-ratio
        policy."""
        self.service.add(
            time.monotonic(), self.engine.generated_tokens, self.engine.busy_s, self.step_model_s, self.step_tokens
        )
        stats = {"queued": float(self.engine.queued), "max_concurrency": float(self.max_concurrency)}
        rate = self.service.rate()
        if rate is not None:
            stats["service_rate"] = rate
        batching = self.service.batching()
        if batching is not None:
            stats["concurrency"], stats["latency_s"] = batching
        return stats

    def check_health(self) -> None:
        if not self.engine.alive:
            raise RuntimeError("engine worker thread is not running")

    def close(self) -> None:
        self.engine.close()

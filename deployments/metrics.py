"""Routing metrics through Ray Serve's metrics API (exported on Ray's Prometheus endpoint)."""

from __future__ import annotations

from collections import deque
from typing import Any

from glimp_ray.collab import CollabResult, StepRecord

ENTROPY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]


class RoutingWindow:
    """The current routing ratio over the last ``size`` steps, by steps and by tokens."""

    def __init__(self, size: int = 1000):
        self.steps: deque[tuple[bool, int]] = deque(maxlen=size)

    def add(self, record: StepRecord) -> None:
        self.steps.append((record.model == "large", record.tokens))

    def large_fraction_by_steps(self) -> float:
        return sum(large for large, _ in self.steps) / len(self.steps) if self.steps else 0.0

    def large_fraction_by_tokens(self) -> float:
        total = sum(tokens for _, tokens in self.steps)
        return sum(tokens for large, tokens in self.steps if large) / total if total else 0.0


class RouterMetrics:
    """Steps by route, tokens by pool, glimpse entropy, routing ratio and request latency."""

    def __init__(self, window: int = 1000):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.window = RoutingWindow(window)
        self.steps = Counter("glimp_steps", description="Reasoning steps by route.", tag_keys=("route",))
        self.tokens = Counter("glimp_tokens", description="Generated tokens by pool.", tag_keys=("pool",))
        self.entropy = Histogram(
            "glimp_glimpse_entropy", description="First-token entropy of glimpses (nats).", boundaries=ENTROPY_BUCKETS
        )
        self.ratio = Gauge(
            "glimp_large_ratio", description="Large-model share of recent steps or tokens.", tag_keys=("by",)
        )
        self.latency = Histogram(
            "glimp_request_latency_s", description="End-to-end request latency (s).", boundaries=LATENCY_BUCKETS
        )
        self.requests = Counter("glimp_requests", description="Finished requests by outcome.", tag_keys=("outcome",))

    def observe(self, event: StepRecord | CollabResult) -> None:
        if isinstance(event, StepRecord):
            self.steps.inc(tags={"route": event.model})
            if event.tokens > 0:  # Ray's counters refuse a zero increment
                self.tokens.inc(event.tokens, tags={"pool": event.model})
            if event.entropy is not None:
                self.entropy.observe(event.entropy)
            self.window.add(event)
            self.ratio.set(self.window.large_fraction_by_steps(), tags={"by": "steps"})
            self.ratio.set(self.window.large_fraction_by_tokens(), tags={"by": "tokens"})
            return
        if event.answer_record.tokens > 0:  # e.g. an answer with no room left in the context
            self.tokens.inc(event.answer_record.tokens, tags={"pool": event.answer_record.model})
        self.latency.observe(event.latency_s)
        self.requests.inc(tags={"outcome": "ok"})

    def failed(self, reason: str) -> None:
        self.requests.inc(tags={"outcome": reason})

    def snapshot(self) -> dict[str, Any]:
        return {
            "large_fraction_by_steps": self.window.large_fraction_by_steps(),
            "large_fraction_by_tokens": self.window.large_fraction_by_tokens(),
            "window_steps": len(self.window.steps),
        }

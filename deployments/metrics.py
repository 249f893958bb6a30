"""Routing metrics through Ray Serve's metrics API (exported on Ray's Prometheus endpoint)."""

from __future__ import annotations

from glimp_ray.autoscaling import RouterLoad
from glimp_ray.collab import CollabResult, StepRecord
from glimp_ray.policies import POST_STEP_POLICIES

ENTROPY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]


class RouterMetrics:
    """Steps by route, tokens by pool, glimpse entropy, routing ratio, request latency and the
    shadow policies' decisions (their agreement with the acting one and the large fraction each
    would have had: ``sum by (policy) (...{agrees="true"}) / sum by (policy) (...)``)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.steps = Counter("glimp_steps", description="Reasoning steps by route.", tag_keys=("route",))
        self.rewritten = Counter(
            "glimp_post_step_steps",
            description="Steps decided by a post-step policy, by policy and whether the large model rewrote the "
            "small model's step.",
            tag_keys=("policy", "rewritten"),  # type: ignore[arg-type]  # Ray annotates it as a 1-tuple
        )
        self.tokens = Counter("glimp_tokens", description="Generated tokens by pool.", tag_keys=("pool",))
        self.entropy = Histogram(
            "glimp_glimpse_entropy", description="First-token entropy of glimpses (nats).", boundaries=ENTROPY_BUCKETS
        )
        self.ratio = Gauge(
            "glimp_large_ratio",
            description="Large-model share of the thinking steps or generated tokens in serving.metrics_window_s.",
            tag_keys=("by",),
        )
        self.latency = Histogram(
            "glimp_request_latency_s", description="End-to-end request latency (s).", boundaries=LATENCY_BUCKETS
        )
        self.requests = Counter(
            "glimp_requests",
            description="Finished requests by outcome and API key name.",
            tag_keys=("outcome", "key"),  # type: ignore[arg-type]  # Ray annotates it as a 1-tuple
        )
        self.threshold = Gauge("glimp_threshold", description="The threshold tau new steps are routed on (nats).")
        self.shadow = Counter(
            "glimp_shadow_steps",
            description="Glimpsed steps by shadow policy (routing.shadow), the decision it would have taken and "
            "whether that agrees with the acting policy's.",
            tag_keys=("policy", "decision", "agrees"),  # type: ignore[arg-type]  # Ray annotates it as a 1-tuple
        )

    def observe(
        self, event: StepRecord | CollabResult, load: RouterLoad, key: str | None = None, shadow: bool = True
    ) -> None:
        """One event, and the routing ratio the router's demand meter now reads; ``key``: the name
        of the API key the request came with; ``shadow``: count the step's shadow decisions (the
        app's shadow policies; not a request's own)."""
        self.ratio.set(load.step_share.get("large", 0.0), tags={"by": "steps"})
        self.ratio.set(load.token_share.get("large", 0.0), tags={"by": "tokens"})
        if isinstance(event, StepRecord):
            self.steps.inc(tags={"route": event.model})
            if event.tokens > 0:  # Ray's counters refuse a zero increment
                self.tokens.inc(event.tokens, tags={"pool": event.model})
            if event.entropy is not None:
                self.entropy.observe(event.entropy)
            if event.policy in POST_STEP_POLICIES:
                self.rewritten.inc(tags={"policy": event.policy, "rewritten": "true" if event.rewritten else "false"})
            if shadow:
                for policy, decision in event.shadow.items():
                    agrees = "true" if decision == event.model else "false"
                    self.shadow.inc(tags={"policy": policy, "decision": decision, "agrees": agrees})
            return
        if event.answer_record.tokens > 0:  # e.g. an answer with no room left in the context
            self.tokens.inc(event.answer_record.tokens, tags={"pool": event.answer_record.model})
        self.latency.observe(event.latency_s)
        self.requests.inc(tags={"outcome": "ok", "key": key or ""})

    def failed(self, reason: str, key: str | None = None) -> None:
        self.requests.inc(tags={"outcome": reason, "key": key or ""})

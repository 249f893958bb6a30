"""The Serve application's arguments: the core config plus how each pool is deployed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from glimp_ray.config import GlimpConfig, ModelConfig, StrictModel


class PoolDeployment(StrictModel):
    """Replicas, resources and placement of one model pool."""

    @field_validator("logging_config")
    @classmethod
    def _serve_logging_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ray.serve.schema import LoggingConfig

        LoggingConfig(**value)  # a misspelt key or level fails here, not at deploy time
        return value

    num_replicas: int | Literal["auto"] = Field(1, description="Fixed replica count, or auto to autoscale.")
    max_ongoing_requests: int = Field(32, ge=1, description="Concurrent step calls per replica.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions allowed).")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. A100, L4.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per replica.")
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a replica must land on, e.g. {glimp/pool: large}."
    )
    autoscaling_config: dict[str, Any] | None = Field(None, description="Ray Serve autoscaling_config.")
    num_fallback_replicas: int = Field(
        2, ge=0, description="Ring successors tried when a session's replica rejects a call."
    )
    logging_config: dict[str, Any] = Field(
        default_factory=lambda: {"enable_access_log": False},
        description="Ray Serve logging_config of the replicas. Access logs (a line per step call) are off by "
        "default; the replica's own per-step line is at DEBUG (set log_level: DEBUG to see it).",
    )

    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of the replicas, e.g. {env_vars: {VLLM_CPU_OMP_THREADS_BIND: '0'}}.",
    )
    placement_group_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "STRICT_PACK",
        description="vLLM pools with tensor_parallel_size > 1: how a replica's GPU bundles are placed.",
    )

    def deployment_options(self, name: str, model: ModelConfig | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (session affinity included).

        A vLLM model sharded over ``tensor_parallel_size`` > 1 GPUs gets a placement group per
        replica, as Ray Serve LLM does: one ``{GPU: 1}`` bundle per shard, the replica's CPUs in
        the first; the replica itself holds no GPU and vLLM starts its Ray workers in the bundles.
        """
        from ray.serve.config import RequestRouterConfig

        sharded = model is not None and model.engine == "vllm" and model.tensor_parallel_size > 1
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": 0.0 if sharded else self.num_gpus}
        if self.accelerator_type and not sharded:
            actor["accelerator_type"] = self.accelerator_type
        if self.resources:
            actor["resources"] = dict(self.resources)
        if self.label_selector and not sharded:
            actor["label_selector"] = dict(self.label_selector)
        if self.runtime_env:
            actor["runtime_env"] = dict(self.runtime_env)
        options: dict[str, Any] = {
            "name": name,
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "logging_config": dict(self.logging_config),
            # Every call of one request goes to the same replica, so its KV cache is reused.
            "request_router_config": RequestRouterConfig(
                request_router_class="ray.serve.experimental.consistent_hash_router.ConsistentHashRouter",  # type: ignore[arg-type]
                request_router_kwargs={"num_fallback_replicas": self.num_fallback_replicas},
            ),
        }
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = dict(self.autoscaling_config)
            options["num_replicas"] = "auto" if self.num_replicas == "auto" else None
            if options["num_replicas"] is None:
                del options["num_replicas"]
        else:
            options["num_replicas"] = self.num_replicas
        if sharded:
            assert model is not None
            shard: dict[str, float] = {"GPU": 1.0}
            if self.accelerator_type:
                shard[f"accelerator_type:{self.accelerator_type}"] = 0.001
            bundles = [dict(shard) for _ in range(model.tensor_parallel_size)]
            bundles[0].update({"CPU": self.num_cpus} if self.num_cpus else {})
            bundles[0].update(self.resources)
            options["placement_group_bundles"] = bundles
            options["placement_group_strategy"] = self.placement_group_strategy
            if self.label_selector:
                options["placement_group_bundle_label_selector"] = [dict(self.label_selector)]
        return options


class RouterDeployment(StrictModel):
    """The HTTP ingress."""

    num_replicas: int = Field(1, ge=1, description="Router replicas.")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per router replica.")
    max_ongoing_requests: int = Field(256, ge=1, description="Concurrent HTTP requests per router replica.")
    max_queued_requests: int = Field(
        512,
        ge=-1,
        description="Requests waiting for a router replica (Serve's max_queued_requests, counted by each proxy); "
        "beyond it a request gets 429 with Retry-After at once instead of queueing. -1: no bound.",
    )
    retry_after_s: float = Field(
        5.0, ge=0, description="Retry-After (seconds) sent with a 429 of a full queue or of shed batch traffic."
    )
    batch_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Batch-priority requests are let in only while a router replica runs fewer than this share of "
        "max_ongoing_requests; interactive ones up to all of it. docs/flow-control.md.",
    )


class TracingConfig(StrictModel):
    """Where the router's spans go (a span per request, per step and for the answer)."""

    exporter: Literal["none", "console", "otlp", "jsonl"] = Field("none", description="Span exporter.")
    path: str | None = Field(None, description="The JSON-lines file for the jsonl exporter.")

    @model_validator(mode="after")
    def _jsonl_needs_a_path(self) -> TracingConfig:
        if self.exporter == "jsonl" and not self.path:
            raise ValueError("the jsonl exporter needs a path")
        return self


class RequestLimits(StrictModel):
    """What one request may ask for; checked by the router before any model is called."""

    max_request_bytes: int = Field(
        4 << 20, ge=1024, description="Largest request body in bytes; larger ones get a 413 before parsing."
    )
    max_prompt_chars: int = Field(
        1_000_000, ge=1, description="Most characters of prompt text (all messages), checked before tokenizing."
    )
    max_thinking_budget: int = Field(32_768, ge=1, description="Largest glimp.thinking_budget a request may set.")
    max_step_tokens: int = Field(4096, ge=1, description="Largest glimp.step_max_tokens a request may set.")
    max_answer_tokens: int = Field(
        16_384, ge=1, description="Largest max_tokens / max_completion_tokens a request may set."
    )
    max_choices: int = Field(
        64, ge=1, description="Most choices one request may ask for (prompts x n), each a collaboration of its own."
    )


class RateLimits(StrictModel):
    """Token buckets of one API key (unset: no limit). A bucket holds its burst and refills at its
    rate per minute; each router replica enforces its share (docs/flow-control.md)."""

    requests_per_minute: float | None = Field(None, gt=0, description="Generation requests per minute.")
    request_burst: int | None = Field(
        None, ge=1, description="Requests the bucket holds (at once after a pause); default: requests_per_minute."
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="Tokens per minute a key's requests may generate, charged at admission: per choice the "
        "thinking budget plus the answer's max_tokens (the app's defaults where the request sets none).",
    )
    token_burst: int | None = Field(None, ge=1, description="Tokens the bucket holds; default: tokens_per_minute.")

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> RateLimits:
        for burst, rate in (("request_burst", "requests_per_minute"), ("token_burst", "tokens_per_minute")):
            if getattr(self, burst) is not None and getattr(self, rate) is None:
                raise ValueError(f"{burst} needs {rate}")
        return self


class ApiKey(StrictModel):
    """One client's API key, by name; the config holds its SHA-256 or where to read it, never the key."""

    name: str = Field(min_length=1, description="Who the key belongs to; on spans and metrics (the key never is).")
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key (e.g. `printf %s KEY | sha256sum`)."
    )
    key_env: str | None = Field(None, min_length=1, description="Environment variable of the router holding the key.")
    rate_limits: RateLimits | None = Field(
        None, description="This key's token buckets; unset: serving.rate_limits (an empty mapping: no limit)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of key_sha256 and key_env")
        return self


class ServingConfig(StrictModel):
    """How the application is exposed and how it reacts to failing pools."""

    model_name: str = Field("glimp-router", min_length=1, description="The model id in /v1/models.")
    step_timeout_s: float = Field(300.0, gt=0, description="Seconds one pool call may take before a 503.")
    retries: int = Field(2, ge=0, description="Retries of a pool call whose replica died.")
    pool_transport: Literal["grpc", "actor"] = Field(
        "grpc",
        description="How the router calls the pools: gRPC (Serve's throughput-optimized transport, about half an "
        "actor call's overhead) or Ray actor calls (Serve's default). docs/serving.md: 'Serve settings'.",
    )
    fallback_to_small: bool = Field(
        False, description="When the large pool is unavailable, the small pool writes the step."
    )
    metrics_window_s: float = Field(
        30.0, gt=0, description="Seconds over which request rate, routing ratio and service rate are measured."
    )
    small: PoolDeployment = Field(default_factory=lambda: PoolDeployment(), description="The small pool.")
    large: PoolDeployment = Field(default_factory=lambda: PoolDeployment(), description="The large pool.")
    router: RouterDeployment = Field(default_factory=lambda: RouterDeployment(), description="The router.")
    tracing: TracingConfig = Field(default_factory=lambda: TracingConfig(), description="Span export.")
    request_limits: RequestLimits = Field(
        default_factory=lambda: RequestLimits(), description="Bounds on what one request may ask for."
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="Keys a client must send as 'Authorization: Bearer <key>' on every route but /health; "
        "none: the server is open.",
    )
    rate_limits: RateLimits = Field(
        default_factory=lambda: RateLimits(),
        description="Token buckets of every API key that sets no rate_limits of its own (unset: no limit).",
    )

    @field_validator("api_keys")
    @classmethod
    def _unique_key_names(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        return keys

    def router_options(self) -> dict[str, Any]:
        """``Deployment.options`` of the router. When a pool autoscales, the router gets a fixed-size
        autoscaling config too: Serve collects its ``record_autoscaling_stats`` (request rate and
        routing ratio) only from autoscaled deployments."""
        options: dict[str, Any] = {
            "name": "GlimpRouter",
            "max_ongoing_requests": self.router.max_ongoing_requests,
            "max_queued_requests": self.router.max_queued_requests,
            "backpressure_config": {"status_code": 429, "retry_after_s": self.router.retry_after_s},
            "ray_actor_options": {"num_cpus": self.router.num_cpus},
        }
        pools = [p.autoscaling_config for p in (self.small, self.large) if p.autoscaling_config is not None]
        if not pools:
            options["num_replicas"] = self.router.num_replicas
            return options
        n = self.router.num_replicas
        options["autoscaling_config"] = {
            "min_replicas": n,
            "max_replicas": n,
            "initial_replicas": n,
            **{key: min(p[key] for p in pools if key in p) for key in _METRICS_KEYS if any(key in p for p in pools)},
        }
        return options


_METRICS_KEYS = ("metrics_interval_s", "look_back_period_s")


class AppConfig(GlimpConfig):
    """``args`` of the Serve application: both models, routing defaults and serving."""

    serving: ServingConfig = Field(default_factory=lambda: ServingConfig(), description="Deployment.")

    @model_validator(mode="after")
    def _defaults_within_request_limits(self) -> AppConfig:
        caps = self.serving.request_limits
        for name, value, cap, cap_name in (
            ("limits.thinking_budget", self.limits.thinking_budget, caps.max_thinking_budget, "max_thinking_budget"),
            ("limits.step_max_tokens", self.limits.step_max_tokens, caps.max_step_tokens, "max_step_tokens"),
            ("limits.answer_max_tokens", self.limits.answer_max_tokens, caps.max_answer_tokens, "max_answer_tokens"),
        ):
            if value > cap:
                raise ValueError(f"{name} ({value}) is above serving.request_limits.{cap_name} ({cap})")
        return self

    @model_validator(mode="after")
    def _sharded_pools_reserve_their_gpus(self) -> AppConfig:
        for which, model, pool in (
            ("small", self.small, self.serving.small),
            ("large", self.large, self.serving.large),
        ):
            tp = model.tensor_parallel_size
            if tp > 1 and model.engine != "vllm":
                raise ValueError(f"{which}.tensor_parallel_size {tp} needs engine: vllm")
            if tp > 1 and pool.num_gpus not in (0, tp):
                raise ValueError(
                    f"{which} shards over {tp} GPUs in a placement group per replica; "
                    f"serving.{which}.num_gpus must be 0 or {tp}, not {pool.num_gpus}"
                )
        return self

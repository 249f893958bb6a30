"""Config files: one YAML describes both models, routing, sampling and limits.

Every model forbids unknown fields and describes its fields; a bad file raises
:class:`ConfigError` naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glimp_ray.collab import CollabParams
from glimp_ray.demo import DEMO_MODELS
from glimp_ray.params import REFERENCE_TOP_K, Preset, check_preset
from glimp_ray.policies import (
    DEFAULT_CUES,
    DEFAULT_VERIFY_SUFFIX,
    DEFAULT_VERIFY_TOKENS,
    PolicyName,
    RandomP,
    check_shadow,
)
from glimp_ray.tau_control import OverloadControl, TauControl


class StrictModel(BaseModel):
    """Config sections: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_VLLM_ONLY = (
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "enforce_eager",
    "tensor_parallel_size",
    "cpu_threads_bind",
    "block_size",
)
_HF_ONLY = ("device", "max_running", "max_batch_tokens", "batching", "kv_cache_gib")
VLLM_MAX_LOGPROBS = 20  # vLLM's default max_logprobs: a request asking for more fails


class ModelConfig(StrictModel):
    """One model of the pair and how its engine runs."""

    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers (exact full-vocabulary entropy); vllm: vLLM's AsyncLLM (top-k only)."
    )
    model: str = Field(
        description="Local HF model directory or hub id; demo:NAME is a demo model shipped with the package."
    )
    tokenizer: str | None = Field(None, description="Tokenizer directory or id; defaults to `model`.")
    name: str | None = Field(None, description="Name in traces and APIs; defaults to the directory name.")
    device: str = Field(
        "auto", description="hf: torch device: auto (cuda when the process sees a GPU, else cpu), cpu, cuda:1, ..."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto is bfloat16 on CUDA and float32 on CPU."
    )
    think_start: str = Field("<think>", description="Marker opening the thinking section.")
    think_end: str = Field("</think>", description="Marker closing the thinking section.")
    max_sessions: int = Field(256, ge=1, description="Sessions kept in the KV cache (LRU).")
    max_cached_tokens: int = Field(1_000_000, ge=1, description="Tokens kept across all sessions (LRU).")
    max_running: int = Field(32, ge=1, description="Requests decoding at once in one engine (the batch size).")
    max_batch_tokens: int = Field(
        1 << 20,
        ge=1,
        description="Bound on the decode batch: running requests x the longest context; admission waits above it.",
    )
    batching: bool = Field(True, description="Continuous batching; off runs one sequence per forward.")
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="hf: KV cache budget in GiB, the sessions' caches and the decode batch together (admission "
        "waits, idle sessions are evicted); default: 80% of the CUDA device's free memory after loading, else 4 GiB.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the model repository.")
    stand_in: str | None = Field(
        None,
        description="Dry runs: load this model (demo:NAME or a directory) on the HF engine on the CPU in place of "
        "`model`, keeping the pool's resources and placement as configured (docs/cluster.md: 'Dry run').",
    )
    # --- vLLM engine only ------------------------------------------------------------
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM: share of GPU memory (on CPU: of node memory) for weights and KV."
    )
    max_model_len: int | None = Field(None, ge=1, description="vLLM: context length; defaults to the model's.")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: sequences in a batch; defaults to max_running.")
    enforce_eager: bool = Field(False, description="vLLM: no graph capture or compilation (faster start).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one replica shards the model over.")
    cpu_threads_bind: str | None = Field(
        None,
        pattern=r"^(auto|nobind|[0-9,\-|]+)$",
        description="vLLM CPU build: cores its OpenMP threads bind to (VLLM_CPU_OMP_THREADS_BIND), e.g. '0' or "
        "'4-7'; engines sharing a machine need disjoint sets.",
    )

    block_size: int | None = Field(
        None,
        ge=1,
        description="vLLM: tokens per KV block, the unit its prefix cache reuses (default 16 on GPUs, 128 on "
        "CPUs; short contexts need a small one to be reused).",
    )

    @field_validator("model", "tokenizer", "stand_in")
    @classmethod
    def _shipped_demo_model(cls, value: str | None) -> str | None:
        """``demo:large`` names ``glimp_ray/demo/models/large`` wherever the process runs."""
        if value is None or not value.startswith("demo:"):
            return value
        path = DEMO_MODELS / value.removeprefix("demo:")
        if not (path / "config.json").is_file():
            shipped = ", ".join(sorted(f"demo:{p.name}" for p in DEMO_MODELS.iterdir() if p.is_dir()))
            raise ValueError(f"no demo model {value!r}; shipped: {shipped}")
        return str(path)

    def served(self) -> ModelConfig:
        """The model this process actually loads: itself, or its stand-in on the HF engine on the CPU
        (same name, so traces and metrics read as the configured model's)."""
        if self.stand_in is None:
            return self
        keep = {"think_start", "think_end", "max_sessions", "max_cached_tokens", "max_running"}
        fields = {k: v for k, v in self.model_dump(include=keep).items()}
        name = self.name or os.path.basename(os.path.normpath(self.model))
        return ModelConfig(model=self.stand_in, engine="hf", device="cpu", name=name, **fields)

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the chosen engine's ``load`` (HFEngine's or VLLMEngine's)."""
        exclude = {"name", "engine", "stand_in", *(_HF_ONLY if self.engine == "vllm" else _VLLM_ONLY)}
        kwargs = self.model_dump(exclude=exclude)
        if self.engine == "vllm":
            kwargs["max_num_seqs"] = self.max_num_seqs or self.max_running
        if self.name:
            kwargs["name"] = self.name
        return kwargs

    def load_engine(self, gpu_share: float | None = None) -> Any:
        """Load this model (or its stand-in) on its engine (a :class:`~glimp_ray.engine.base.StepClient`).

        ``gpu_share``: the share of one GPU this process was given (Ray's ``num_gpus``); an HF
        engine's default KV budget takes that share of the device, not all of it."""
        if self.stand_in is not None:
            return self.served().load_engine()
        if self.engine == "vllm":
            from glimp_ray.engine.vllm import VLLMEngine

            return VLLMEngine.load(**self.engine_kwargs())
        from glimp_ray.engine.hf import HFEngine

        return HFEngine.load(**self.engine_kwargs(), gpu_share=gpu_share)


class OverloadConfig(StrictModel):
    """When the large pool is saturated, τ rises so more steps stay on the small pool."""

    max_token_s: float = Field(
        gt=0,
        description="A large call's median seconds per generated token (wall clock: waits and a slowed batch "
        "included) that means saturated.",
    )
    tau_max: float = Field(description="The highest τ overload may set: the bound on the accuracy traded.")
    raise_step: float = Field(0.1, gt=0, description="τ added per window of large calls while saturated.")
    fall_step: float = Field(0.05, gt=0, description="τ removed per window once below half the bound.")
    window: int = Field(16, ge=1, description="Large calls per decision.")


ROUTER_ONLY = ("target_large_fraction", "tau_window", "tau_min", "overload")


class RoutingConfig(StrictModel):
    """Which model writes each step, and under which loop rules."""

    preset: Preset = Field(
        "glimp",
        description="glimp: this project's loop rules; reference: the paper's reference code's (H >= τ goes large, "
        "a repeat ends the thinking from the 3rd step, every step is followed by the delimiter, the last step is "
        "not clipped to the budget, the answer follows '\\n</think>\\n\\n'). reference sets entropy: topk and "
        "top_k: 20; other values with it are an error. docs/routing.md: 'The reference preset'.",
    )
    policy: PolicyName = Field(
        "entropy",
        description="Pre-step (decides from the glimpse): entropy (GlimpRouter), top1 (the glimpsed token's "
        "probability below τ goes large), margin (top-1 minus top-2 probability below τ goes large). Post-step "
        "(the small model writes the step, the large one rewrites it when): h_step (its mean token entropy above "
        "τ), ppl_step (its perplexity above τ), min_prob (its least likely token's probability below τ), cue "
        "(it opens with one of `cues`), verify (the large model's probability of `verify_tokens` after the step and "
        "`verify_suffix` below τ). Baselines: small-only, large-only, random. docs/routing.md: 'Post-step policies'.",
    )
    mode: Literal["fused", "paper"] = Field(
        "fused", description="fused: one small call glimpses and continues; paper: separate glimpse call."
    )
    threshold: float = Field(
        1.0,
        description="τ: steps whose glimpse entropy (nats) exceeds it go large (reaches it: preset reference); "
        "for top1 and margin a probability, below it goes large; for the post-step policies the value of their "
        "signal (nats, a perplexity, or a probability) past which the large model rewrites the step.",
    )
    cues: list[str] = Field(
        list(DEFAULT_CUES), min_length=1, description="The cue policy's words: a step opening with one is rewritten."
    )
    verify_suffix: str = Field(
        DEFAULT_VERIFY_SUFFIX, min_length=1, description="The verify policy's question after the small model's step."
    )
    verify_tokens: list[str] = Field(
        list(DEFAULT_VERIFY_TOKENS),
        min_length=1,
        description="The verify policy's 'yes': the total probability of these strings' first tokens is the score.",
    )
    entropy: Literal["full", "topk"] = Field(
        "full", description="Entropy over the full vocabulary or the top-k renormalised (a vLLM small model: topk)."
    )
    top_k: int = Field(20, ge=1, description="k for top-k entropy (renormalised).")
    random_p: RandomP = Field(0.25, description="Large-step probability of the random policy.")
    streaming_glimpse: bool = Field(
        True,
        description="Fused mode: one small-pool call writes consecutive easy steps, glimpsing each next one "
        "itself, and streams them back until a step goes large (false: one call per step).",
    )
    target_large_fraction: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Served only: the router adapts τ online to the quantile of recent glimpse entropies that sends "
        "this share of steps large (glimp-ray calibrate, online); unset: τ stays as configured.",
    )
    tau_window: int = Field(512, ge=8, description="Glimpse entropies the online τ is taken over.")
    tau_min: float = Field(0.0, description="Served only: the lowest τ the online controls may set.")
    overload: OverloadConfig | None = Field(
        None, description="Served only: raise τ to shed steps to the small pool while the large pool is saturated."
    )
    shadow: dict[str, float] = Field(
        default_factory=dict,
        description="Shadow policies: name -> τ, e.g. {top1: 0.6, margin: 0.1}. Each is decided from every glimpsed "
        "step's glimpse beside the acting policy and only recorded (step records, spans, the glimp_shadow_steps "
        "metric). Policies that need no model work of their own: entropy, top1, margin (from the glimpse), h_step, "
        "ppl_step, min_prob, cue (from a step the small model wrote). docs/routing.md: 'Shadow routing'.",
    )

    @field_validator("shadow")
    @classmethod
    def _shadow_policies(cls, shadow: dict[str, float]) -> dict[str, float]:
        return dict(check_shadow(shadow))

    def tau_control(self) -> TauControl:
        """The router's online τ settings (inactive when neither control is set)."""
        overload = None
        if self.overload is not None:
            overload = OverloadControl(**self.overload.model_dump())
        return TauControl(
            target_large_fraction=self.target_large_fraction,
            window=self.tau_window,
            min_samples=min(32, self.tau_window),
            tau_min=self.tau_min,
            overload=overload,
        )

    @model_validator(mode="before")
    @classmethod
    def _reference_glimpse(cls, data: Any) -> Any:
        """The reference preset's entropy, unless the section chooses one (checked below)."""
        if isinstance(data, dict) and data.get("preset") == "reference":
            return {"entropy": "topk", "top_k": REFERENCE_TOP_K, **data}
        return data

    @model_validator(mode="after")
    def _preset_glimpse(self) -> RoutingConfig:
        check_preset(self.preset, self.entropy, self.top_k)
        self.tau_control()  # e.g. overload.tau_max below tau_min
        return self

    @staticmethod
    def entropy_refused(entropy: str, small_engine: str, top_k: int | None = None) -> str | None:
        """Why the small model's engine cannot glimpse ``entropy`` over ``top_k`` (``None``: it can)."""
        if entropy == "full" and small_engine == "vllm":
            return (
                "the small model runs on vLLM, which gives top-k logprobs only: set entropy topk "
                "(τ on the top-k scale, at most ln(top_k))"
            )
        if small_engine == "vllm" and top_k is not None and top_k > VLLM_MAX_LOGPROBS:
            return f"top_k {top_k} is above vLLM's max_logprobs ({VLLM_MAX_LOGPROBS}); use top_k <= {VLLM_MAX_LOGPROBS}"
        return None


class SamplingConfig(StrictModel):
    """Token sampling for every call (temperature 0 is greedy)."""

    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Sampling temperature; 0 means greedy. Unset: each model's generation_config.json, else 0.6.",
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling mass. Unset: each model's generation_config.json, else 0.95."
    )
    seed: int | None = Field(None, description="Seed for reproducible sampling and random routing.")
    top_k: int | None = Field(
        None,
        ge=0,
        description="Sample from the k most likely tokens (0: off). Unset: each model's generation_config.json, "
        "else off. Not routing.top_k (the glimpse's top-k entropy).",
    )
    min_p: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Drop tokens below min_p x the top probability. Unset: each model's generation_config.json, "
        "else off.",
    )


class LimitsConfig(StrictModel):
    """Step shape and token budgets."""

    delimiter: str = Field("\n\n", min_length=1, description="Text separating reasoning steps.")
    step_max_tokens: int = Field(512, ge=1, description="Most tokens in one step.")
    thinking_budget: int = Field(8192, ge=1, description="Most thinking tokens before the answer.")
    answer_max_tokens: int = Field(2048, ge=1, description="Most tokens in the final answer.")
    answer_model: Literal["auto", "small", "large"] = Field(
        "auto", description="Who writes the answer; auto is large, or small under the small policy."
    )


class GlimpConfig(StrictModel):
    """The whole file: both models, routing, sampling and limits."""

    small: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model=str(DEMO_MODELS / "small")),
        description="The small model that glimpses every step (default: the shipped demo model).",
    )
    large: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model=str(DEMO_MODELS / "large")),
        description="The large model that writes high-entropy steps (default: the shipped demo model).",
    )
    routing: RoutingConfig = Field(RoutingConfig(), description="Routing policy.")
    sampling: SamplingConfig = Field(SamplingConfig(), description="Sampling.")
    limits: LimitsConfig = Field(LimitsConfig(), description="Budgets and delimiter.")

    @model_validator(mode="after")
    def _glimpse_the_engine_can_give(self) -> GlimpConfig:
        if self.small.engine == "vllm" and self.routing.entropy == "full":
            raise ValueError(
                "the small model runs on vLLM, which gives top-k logprobs only: set routing.entropy: topk "
                "(τ on the top-k scale, at most ln(top_k))"
            )
        if self.small.engine == "vllm" and self.routing.top_k > VLLM_MAX_LOGPROBS:
            raise ValueError(
                f"routing.top_k {self.routing.top_k} is above vLLM's max_logprobs ({VLLM_MAX_LOGPROBS}): every "
                f"glimpse of the small model would fail; use top_k <= {VLLM_MAX_LOGPROBS}"
            )
        return self

    def collab_params(self) -> CollabParams:
        """The loop's parameters from this config."""
        routing = self.routing.model_dump(exclude=set(ROUTER_ONLY))
        sampling = self.sampling.model_dump()
        sampling["sampling_top_k"] = sampling.pop("top_k")  # routing.top_k is the glimpse's
        return CollabParams(**routing, **sampling, **self.limits.model_dump())


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and field."""


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GlimpConfig:
    """Validate a mapping (e.g. parsed YAML) into a :class:`GlimpConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return GlimpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config\n{format_validation_error(exc)}") from None


def load_config(path: str | Path) -> GlimpConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))

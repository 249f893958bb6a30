"""GPU types and prices from a gpus file: the ways each pool's replicas can run.

A gpus file (``configs/gpus.example.yaml``) names the two models and lists GPU types: the name
(a :data:`glimp_ray.hardware.GPU_MEMORY` key such as ``L4`` or ``A100-80GB``, or a type Ray
detects with its ``memory_gib``), a price per GPU-hour, and per model a profile: a measured
profile file, or one scaled from a measured profile by stated speedups (an assumption the file
says it makes). A pool option is a GPU type with a profile for the pool's model and the smallest
tensor-parallel degree at which the model's weights and the KV cache of one full context
(``max_model_len``) fit (:func:`glimp_ray.hardware.fit_on_gpus`); a scaled profile's KV budget
is what that memory leaves. A file that cannot be used raises :class:`PlacementError`: one line
naming the file and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from glimp_ray.config import ConfigError, StrictModel
from glimp_ray.hardware import GPU_MEMORY, RAY_DETECTED, ModelShape, fit_on_gpus, model_shape
from glimp_ray.plan_model import POOLS
from glimp_ray.profile import EngineProfile

TENSOR_PARALLEL = (1, 2, 4, 8)


class PlacementError(ConfigError):
    """A gpus file that cannot be used: one line naming the file and what is wrong."""


class ScaleRule(StrictModel):
    profile: str = Field(description="A measured profile JSON to scale (a path relative to the gpus file).")
    decode_speedup: float = Field(
        gt=0,
        description="A lone call's seconds per generated token, and a glimpse's, are divided by this "
        "(an assumption: say why beside it).",
    )
    batch_speedup: float | None = Field(
        None,
        gt=0,
        description="What batching adds to a token's seconds over a lone call's is divided by this "
        "(default: decode_speedup; GPUs batch far more cheaply than CPUs).",
    )
    prefill_speedup: float | None = Field(
        None, gt=0, description="Its prefill seconds per token are divided by this (default: decode_speedup)."
    )


class ProfileSource(StrictModel):
    file: str | None = Field(None, description="A profile measured on this GPU type (path relative to the gpus file).")
    scale_from: ScaleRule | None = Field(None, description="A profile scaled from a measured one.")
    tensor_parallel: int | None = Field(
        None, ge=1, description="GPUs per replica; default: the fewest that fit the model and one full context."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Calls a replica runs at once (default: the profile's).")

    @model_validator(mode="after")
    def _one_source(self) -> ProfileSource:
        if (self.file is None) == (self.scale_from is None):
            raise ValueError("give exactly one of file and scale_from")
        return self


class GPUEntry(StrictModel):
    name: str = Field(description="A GPU_MEMORY name (L4, A10G, A100-80GB, H100, ...) or a type Ray detects.")
    memory_gib: float | None = Field(None, gt=0, description="Memory of one GPU (default: GPU_MEMORY's).")
    price_per_hour: float = Field(gt=0, description="Price of one GPU for an hour.")
    price_is_placeholder: bool = Field(True, description="The price is an example, not a quote: say so in output.")
    max_tensor_parallel: int = Field(8, ge=1, description="The most GPUs one replica may span (a node's GPUs).")
    profiles: dict[str, ProfileSource] = Field(
        description="Per model (small, large): how a replica of it performs on this GPU type."
    )

    @model_validator(mode="after")
    def _pools(self) -> GPUEntry:
        unknown = set(self.profiles) - set(POOLS)
        if unknown:
            raise ValueError(f"profiles are keyed small and large, got {', '.join(sorted(unknown))}")
        return self


class ModelEntry(StrictModel):
    model: str = Field(description="A local directory with a config.json, or a model glimp_ray.hardware knows.")
    max_model_len: int | None = Field(
        None, ge=1, description="The context one request may reach (default: the model's maximum, as vLLM)."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field("bfloat16", description="Weights' and KV's dtype.")


class GPUsFile(StrictModel):
    models: dict[str, ModelEntry] = Field(description="The small and the large model (keys small and large).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM's share of each GPU's memory.")
    gpus: list[GPUEntry] = Field(min_length=1, description="The GPU types a pool may run on.")

    @model_validator(mode="after")
    def _both_models(self) -> GPUsFile:
        if set(self.models) != set(POOLS):
            raise ValueError(f"models needs exactly small and large, got {', '.join(sorted(self.models)) or 'none'}")
        return self


@dataclass(frozen=True)
class PoolOption:
    """One way to run a pool's replicas: a GPU type, GPUs per replica, and the profile there."""

    gpu: str  # the gpus file's name (A100-80GB)
    accelerator_type: str  # Ray's name (A100)
    tensor_parallel: int
    price_per_gpu_hour: float
    placeholder_price: bool
    profile: EngineProfile
    kv_contexts: float  # full contexts (max_model_len) its KV cache holds

    @property
    def price_per_replica_hour(self) -> float:
        return self.price_per_gpu_hour * self.tensor_parallel

    def describe(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "accelerator_type": self.accelerator_type,
            "tensor_parallel": self.tensor_parallel,
            "price_per_gpu_hour": self.price_per_gpu_hour,
            "placeholder_price": self.placeholder_price,
            "decode_ms_per_token_alone": self.profile.latency(1.0) * 1000,
            "kv_contexts": self.kv_contexts,
            "profile_notes": self.profile.notes,
        }


def load_gpus(path: str | Path) -> tuple[GPUsFile, Path]:
    """The validated gpus file and the directory its relative paths start from."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PlacementError(f"gpus file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise PlacementError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        return GPUsFile.model_validate(data), path.parent
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise PlacementError(f"{path}: {where}: {first['msg']}") from None


def _memory(entry: GPUEntry, source: Path) -> tuple[str, float]:
    """Ray's name for the GPU type and one device's memory."""
    if entry.name in GPU_MEMORY:
        known = GPU_MEMORY[entry.name]
        return known.name, entry.memory_gib or known.memory_gib
    if entry.name in RAY_DETECTED and entry.memory_gib:
        return entry.name, entry.memory_gib
    if entry.name in RAY_DETECTED:
        raise PlacementError(f"{source}: GPU {entry.name!r} needs memory_gib (glimp_ray.hardware does not know it)")
    raise PlacementError(
        f"{source}: unknown GPU {entry.name!r}: use one of {', '.join(GPU_MEMORY)} or a type Ray detects "
        f"({', '.join(sorted(RAY_DETECTED - set(GPU_MEMORY)))}) with memory_gib"
    )


def fewest_gpus(shape: ModelShape, model: ModelEntry, memory_gib: float, utilization: float, most: int) -> int | None:
    """The smallest tensor-parallel degree (dividing the attention heads) at which the weights and
    one full context fit; ``None`` if none up to ``most`` does."""
    context = model.max_model_len or shape.max_context
    for tp in TENSOR_PARALLEL:
        if tp <= most and shape.heads % tp == 0:
            fit = fit_on_gpus(shape, memory_gib, tp, utilization, model.dtype)
            if fit.kv_tokens >= context:
                return tp
    return None


def _profile(path: str, base: Path, source: Path, where: str) -> EngineProfile:
    try:
        return EngineProfile.load(base / path)
    except ValueError as exc:
        raise PlacementError(f"{source}: {where}: {exc}") from None


def pool_options(gpus: GPUsFile, base: Path, source: Path | str = "gpus file") -> dict[str, list[PoolOption]]:
    """Every pool's options: the GPU types with a profile for its model where the model fits."""
    source = Path(source)
    options: dict[str, list[PoolOption]] = {p: [] for p in POOLS}
    names = [g.name for g in gpus.gpus]
    if len(set(names)) < len(names):
        raise PlacementError(f"{source}: a GPU type is listed twice: {', '.join(names)}")
    shapes = {}
    for pool in POOLS:
        try:
            shapes[pool] = model_shape(gpus.models[pool].model)
        except KeyError as exc:
            raise PlacementError(f"{source}: models.{pool}: {exc.args[0]}") from None
    for entry in gpus.gpus:
        accelerator, memory = _memory(entry, source)
        for pool, spec in entry.profiles.items():
            model, shape, where = gpus.models[pool], shapes[pool], f"{entry.name}.profiles.{pool}"
            utilization = gpus.gpu_memory_utilization
            tp: int | None
            if spec.file is not None:
                profile = _profile(spec.file, base, source, where)
                tp = spec.tensor_parallel or profile.tensor_parallel
            else:
                assert spec.scale_from is not None
                profile = _profile(spec.scale_from.profile, base, source, where)
                tp = spec.tensor_parallel or fewest_gpus(shape, model, memory, utilization, entry.max_tensor_parallel)
            if tp is None:
                continue  # the model fits nowhere on this type: not an option (an error if on none)
            fit = fit_on_gpus(shape, memory, tp, utilization, model.dtype)
            context = model.max_model_len or shape.max_context
            if fit.kv_tokens < context:
                raise PlacementError(
                    f"{source}: {where}: {model.model} at tensor_parallel {tp} leaves KV for "
                    f"{fit.kv_tokens} tokens on {entry.name}, under one {context}-token context"
                )
            if spec.scale_from is not None:
                rule = spec.scale_from
                decode, prefill = rule.decode_speedup, rule.prefill_speedup or rule.decode_speedup
                batch = rule.batch_speedup or decode
                alone = profile.latency(1.0)
                profile = EngineProfile(
                    model=model.model,
                    engine=profile.engine,
                    dtype=model.dtype,
                    accelerator=accelerator,
                    decode_s={b: alone / decode + (s - alone) / batch for b, s in profile.decode_s.items()},
                    prefill_s_per_token=profile.prefill_s_per_token / prefill,
                    glimpse_s=profile.glimpse_s / decode,  # one forward of one token, as a decode step
                    kv_bytes_per_token=fit.kv_bytes_per_token,
                    kv_budget_bytes=fit.kv_tokens * fit.kv_bytes_per_token,
                    max_concurrency=spec.max_num_seqs or profile.max_concurrency,
                    tensor_parallel=tp,
                    notes={
                        "scaled_from": rule.profile,
                        "decode_speedup": decode,
                        "batch_speedup": batch,
                        "prefill_speedup": prefill,
                        "assumption": "a lone call's seconds per token and a glimpse / decode_speedup, what batching "
                        "adds / batch_speedup, prefill / prefill_speedup; KV budget from this GPU's memory",
                    },
                )
            elif spec.max_num_seqs:
                profile = EngineProfile.from_dict({**profile.to_dict(), "max_concurrency": spec.max_num_seqs})
            options[pool].append(
                PoolOption(
                    entry.name,
                    accelerator,
                    tp,
                    entry.price_per_hour,
                    entry.price_is_placeholder,
                    profile,
                    fit.kv_tokens / context,
                )
            )
    for pool in POOLS:
        if not any(pool in e.profiles for e in gpus.gpus):
            raise PlacementError(f"{source}: no GPU type has a profile for the {pool} model")
        if not options[pool]:
            model = gpus.models[pool]
            raise PlacementError(
                f"{source}: the {pool} model {model.model} ({shapes[pool].weight_bytes(model.dtype) / 2**30:.1f} GiB "
                f"of weights, {model.max_model_len or shapes[pool].max_context}-token context) fits on none of "
                f"{', '.join(e.name for e in gpus.gpus if pool in e.profiles)}"
            )
    return options

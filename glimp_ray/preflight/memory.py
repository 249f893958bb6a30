"""GPU memory of one model pool: weights and KV cache on its GPU type, against what the pool asks.

vLLM reserves ``gpu_memory_utilization`` of each device; what the weights (sharded over the
tensor-parallel GPUs) and the runtime leave is the KV cache (``glimp_ray.hardware.fit_on_gpus``).
A pool should hold ``max_num_seqs`` full ``max_model_len`` contexts at once; with less, vLLM
preempts sequences under load, and with less than one it refuses to start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from glimp_ray.config import ModelConfig
from glimp_ray.hardware import RUNTIME_OVERHEAD_GIB, GPUType, fit_on_gpus, model_shape
from glimp_ray.preflight.report import Problem, error, warning


@dataclass(frozen=True)
class PoolMemory:
    """What the memory check found for one pool."""

    gpu: GPUType
    weights_gib: float | None = None
    kv_tokens: int | None = None
    contexts: float | None = None
    max_num_seqs: int | None = None


def weights_gib(model: ModelConfig) -> float | None:
    """The model's weights in GiB (``None``: its shape is unknown here)."""
    try:
        shape = model_shape(model.model)
    except KeyError:
        return None
    return shape.weight_bytes(_dtype(model)) / (1 << 30)


def _dtype(model: ModelConfig) -> str:
    return "bfloat16" if model.dtype == "auto" else model.dtype


def check_pool_memory(
    which: str, model: ModelConfig, num_gpus: float, gpu: GPUType
) -> tuple[PoolMemory | None, list[Problem]]:
    """Check pool ``which`` (small|large) on ``gpu``; ``num_gpus`` is the pool's per-replica share."""
    try:
        shape = model_shape(model.model)
    except KeyError as exc:
        return None, [warning(f"{which}.model", f"{exc.args[0]}; its memory is not checked")]
    dtype = _dtype(model)
    problems: list[Problem] = []
    if model.engine == "hf":
        share = min(num_gpus, 1.0)
        weights = shape.weight_bytes(dtype) / (1 << 30)
        room = share * gpu.memory_gib - RUNTIME_OVERHEAD_GIB
        if weights > room:
            problems.append(
                error(
                    f"serving.{which}.num_gpus",
                    f"{model.model}'s weights ({weights:.1f} GiB) do not fit in {share:g} of a {gpu.name} "
                    f"({gpu.memory_gib:g} GiB): give the pool a whole larger GPU or use engine: vllm with "
                    "tensor_parallel_size",
                )
            )
        return PoolMemory(gpu, weights), problems

    tp = model.tensor_parallel_size
    utilization = model.gpu_memory_utilization
    if tp == 1 and 0 < num_gpus < 1:
        sharing = math.floor(1 / num_gpus + 1e-9)
        if sharing * utilization > 1:
            problems.append(
                error(
                    f"{which}.gpu_memory_utilization",
                    f"serving.{which}.num_gpus {num_gpus:g} puts {sharing} replicas on one GPU, each reserving "
                    f"{utilization:g} of it: lower gpu_memory_utilization to at most {1 / sharing:.2f} or give each "
                    "replica its GPU (num_gpus: 1)",
                )
            )
        if sharing > 1:
            problems.append(
                warning(
                    f"serving.{which}.num_gpus",
                    f"{num_gpus:g} shares one GPU between {sharing} vLLM engines: engines starting together can "
                    "fail vLLM's start-up memory profiling and restart; give each replica its GPU (num_gpus: 1)",
                )
            )
    fit = fit_on_gpus(shape, gpu.memory_gib, gpus=tp, utilization=utilization, dtype=dtype)
    context = model.max_model_len or shape.max_context
    seqs = model.max_num_seqs or model.max_running
    gpus_text = f"{tp} x {gpu.name} {gpu.memory_gib:g} GiB" if tp > 1 else f"a {gpu.name} {gpu.memory_gib:g} GiB"
    if fit.kv_gib <= 0:
        problems.append(
            error(
                f"{which}.tensor_parallel_size",
                f"{model.model}'s weights ({fit.weights_gib:.1f} GiB) leave no KV cache on {gpus_text} at "
                f"gpu_memory_utilization {utilization:g}: shard it over more GPUs or use larger ones",
            )
        )
        return PoolMemory(gpu, fit.weights_gib, 0, 0.0, seqs), problems
    contexts = fit.contexts(context)
    per_token = fit.kv_bytes_per_token / 1024
    held = f"the KV cache on {gpus_text} at gpu_memory_utilization {utilization:g} holds {fit.kv_tokens:,} tokens "
    held += f"({per_token:g} KiB each)"
    if contexts < 1:
        problems.append(
            error(
                f"{which}.max_model_len",
                f"{held}, less than one {context}-token context (vLLM refuses to start): set max_model_len to at "
                f"most {fit.kv_tokens}, or give the pool more GPU memory",
            )
        )
    elif contexts < seqs:
        problems.append(
            error(
                f"{which}.max_num_seqs",
                f"{held} = {contexts:.1f} full {context}-token contexts, fewer than max_num_seqs {seqs}: set "
                f"max_num_seqs to at most {math.floor(contexts)}, or max_model_len to at most "
                f"{fit.kv_tokens // seqs}, or give the pool more GPU memory",
            )
        )
    return PoolMemory(gpu, fit.weights_gib, fit.kv_tokens, contexts, seqs), problems

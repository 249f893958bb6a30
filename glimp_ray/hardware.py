"""GPU memory arithmetic: what a model's weights and KV cache take, and what fits on a GPU type.

One definition for the preflight check (``glimp-ray check``), the planner's GPU placements and
the profiles: a model's shape comes from its ``config.json`` (a local directory) or, for the
models the shipped configs name, from a small table, so nothing is downloaded. GPU types carry
the name Ray detects on a node (``accelerator_type``): NVIDIA's A100 40 GB and 80 GB are both
detected as ``A100``, so memory is a property of a node type, not of the name alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2}
# vLLM's memory besides weights and KV per GPU: CUDA context, activations of a profiling batch,
# CUDA graphs. An estimate (1.5-2 GiB is what vLLM 0.x logs on L4/A100 for 4B-32B models).
RUNTIME_OVERHEAD_GIB = 2.0


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a decoder's config that size its weights and KV cache."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    max_context: int
    params: int | None = None  # the published count where known; else estimated from the shape

    def parameter_count(self) -> int:
        if self.params is not None:
            return self.params
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (attention + mlp + 2 * self.hidden) + embeddings + self.hidden

    def weight_bytes(self, dtype: str = "bfloat16") -> int:
        return self.parameter_count() * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """Layers x KV heads x head dim x 2 (keys and values) x the dtype's bytes."""
        return self.layers * self.kv_heads * self.head_dim * 2 * DTYPE_BYTES[dtype]


# The models the shipped configs and docs name (from their published config.json files).
KNOWN_MODELS: dict[str, ModelShape] = {
    "Qwen/Qwen3-4B-Thinking-2507": ModelShape(36, 2560, 32, 8, 128, 9728, 151936, True, 262144, 4_022_468_096),
    "Qwen/Qwen3-8B": ModelShape(36, 4096, 32, 8, 128, 12288, 151936, False, 40960, 8_190_735_360),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": ModelShape(
        28, 1536, 12, 2, 128, 8960, 151936, False, 131072, 1_777_088_000
    ),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": ModelShape(
        28, 3584, 28, 4, 128, 18944, 152064, False, 131072, 7_615_616_512
    ),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": ModelShape(
        64, 5120, 40, 8, 128, 27648, 152064, False, 131072, 32_763_876_352
    ),
}


def shape_from_config(config: dict) -> ModelShape:
    """A ``ModelShape`` from a Hugging Face ``config.json`` mapping (its text config if nested)."""
    config = config.get("text_config", config)
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return ModelShape(
        layers=int(config["num_hidden_layers"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate=int(config.get("intermediate_size") or 4 * hidden),
        vocab=int(config["vocab_size"]),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_context=int(config.get("max_position_embeddings") or 0),
    )


def model_shape(model: str) -> ModelShape:
    """The shape of ``model``: a local directory's ``config.json``, else the table above.

    Raises ``KeyError`` naming the model when neither knows it (no hub lookup).
    """
    path = Path(model)
    if (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text()))
    if model in KNOWN_MODELS:
        return KNOWN_MODELS[model]
    raise KeyError(
        f"unknown model {model!r}: give a local directory with a config.json, or one of {', '.join(KNOWN_MODELS)}"
    )


@dataclass(frozen=True)
class GPUType:
    """A GPU as Ray names it on a node (``accelerator_type``) and the memory one device has."""

    name: str  # what Ray auto-detects: accelerator_type:<name> on the node
    memory_gib: float  # what the device reports (nvidia-smi's total), in GiB


# Memory as the devices report it (MiB / 1024); A100 appears twice because Ray names both A100.
GPU_MEMORY: dict[str, GPUType] = {
    "T4": GPUType("T4", 15.0),
    "A10G": GPUType("A10G", 22.49),
    "L4": GPUType("L4", 22.49),
    "L40S": GPUType("L40S", 44.99),
    "A100-40GB": GPUType("A100", 40.0),
    "A100-80GB": GPUType("A100", 80.0),
    "H100": GPUType("H100", 79.65),
    "H200": GPUType("H200", 140.4),
}
# Names Ray detects by itself. A100-40G / A100-80G exist in ray.util.accelerators but Ray "does
# not auto-add them to nodes": a deployment asking for one waits forever unless a node declares it.
RAY_DETECTED = {"T4", "A10G", "L4", "L40S", "A100", "H100", "H200", "B200", "V100", "P100", "K80", "P4", "H20"}


@dataclass(frozen=True)
class Fit:
    """How a model sits on ``gpus`` devices of ``memory_gib`` at a memory ``utilization``."""

    weights_gib: float
    kv_gib: float  # left for the KV cache (negative: the weights do not fit)
    kv_tokens: int
    kv_bytes_per_token: int

    def contexts(self, context_tokens: int) -> float:
        """Full contexts of ``context_tokens`` the KV cache holds at once."""
        return self.kv_tokens / context_tokens if context_tokens > 0 else 0.0


def fit_on_gpus(
    shape: ModelShape, memory_gib: float, gpus: int = 1, utilization: float = 0.9, dtype: str = "bfloat16"
) -> Fit:
    """vLLM's arithmetic: ``utilization`` of each device's memory, minus the weights (sharded over
    ``gpus``) and a per-device runtime overhead, is the KV cache."""
    weights = shape.weight_bytes(dtype) / GIB
    kv = gpus * (memory_gib * utilization - RUNTIME_OVERHEAD_GIB) - weights
    per_token = shape.kv_bytes_per_token(dtype)
    tokens = max(int(kv * GIB // per_token), 0)
    return Fit(weights_gib=weights, kv_gib=kv, kv_tokens=tokens, kv_bytes_per_token=per_token)


__all__ = [
    "GIB",
    "GPU_MEMORY",
    "KNOWN_MODELS",
    "RAY_DETECTED",
    "Fit",
    "GPUType",
    "ModelShape",
    "fit_on_gpus",
    "model_shape",
    "shape_from_config",
]

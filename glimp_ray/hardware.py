"""GPU memory arithmetic: what a model's weights and KV cache take, and what fits on a GPU type.

One definition for the preflight check (``glimp-ray check``), the planner's GPU placements and
the profiles: a model's shape comes from its ``config.json`` (a local directory) or, for the
models the shipped configs name, from a small table, so nothing is downloaded. GPU types carry
the name Ray detects on a node (``accelerator_type``): NVIDIA's A100 40 GB and 80 GB are both
detected as ``A100``, so memory is a property of a node type, not of the name alone. Machine
types (a cloud instance type, or GKE's accelerator label) tell a node type's GPU type, count,
vCPUs and memory, and ``gke_allocatable`` what a GKE node of one leaves its pods.
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
    "V100": GPUType("V100", 15.77),
}
# Names Ray detects by itself. A100-40G / A100-80G exist in ray.util.accelerators but Ray "does
# not auto-add them to nodes": a deployment asking for one waits forever unless a node declares it.
RAY_DETECTED = {"T4", "A10G", "L4", "L40S", "A100", "H100", "H200", "B200", "V100", "P100", "K80", "P4", "H20"}


def gpus_named(accelerator_type: str) -> list[GPUType]:
    """The GPU types Ray names ``accelerator_type`` (two for ``A100``), largest memory first."""
    found = [gpu for gpu in GPU_MEMORY.values() if gpu.name == accelerator_type]
    return sorted(set(found), key=lambda gpu: -gpu.memory_gib)


@dataclass(frozen=True)
class Machine:
    """A cloud machine type: what a node of it has before Kubernetes or Ray take their share."""

    name: str
    provider: str  # "gcp" or "aws": whose reservations apply under Kubernetes
    vcpus: int
    memory_gib: float
    gpu: str | None = None  # a GPU_MEMORY key
    gpus: int = 0

    @property
    def gpu_type(self) -> GPUType | None:
        return GPU_MEMORY[self.gpu] if self.gpu else None


def _gcp(name: str, vcpus: int, memory_gb: float, gpu: str | None = None, gpus: int = 0) -> Machine:
    # Compute Engine lists memory in "GB"; taken as 10^9 bytes, the smaller reading, so pod sizes
    # checked against it are on the safe side.
    return Machine(name, "gcp", vcpus, memory_gb * 1e9 / GIB, gpu, gpus)


def _aws(name: str, vcpus: int, memory_gib: float, gpu: str | None = None, gpus: int = 0) -> Machine:
    return Machine(name, "aws", vcpus, memory_gib, gpu, gpus)


# The machines the shipped manifests name and their usual neighbours (providers' published sizes).
MACHINES: dict[str, Machine] = {
    m.name: m
    for m in (
        _gcp("n2-standard-4", 4, 16),
        _gcp("n2-standard-8", 8, 32),
        _gcp("g2-standard-4", 4, 16, "L4", 1),
        _gcp("g2-standard-8", 8, 32, "L4", 1),
        _gcp("g2-standard-12", 12, 48, "L4", 1),
        _gcp("g2-standard-16", 16, 64, "L4", 1),
        _gcp("g2-standard-24", 24, 96, "L4", 2),
        _gcp("g2-standard-48", 48, 192, "L4", 4),
        _gcp("a2-highgpu-1g", 12, 85, "A100-40GB", 1),
        _gcp("a2-highgpu-2g", 24, 170, "A100-40GB", 2),
        _gcp("a2-highgpu-4g", 48, 340, "A100-40GB", 4),
        _gcp("a2-highgpu-8g", 96, 680, "A100-40GB", 8),
        _gcp("a2-ultragpu-1g", 12, 170, "A100-80GB", 1),
        _gcp("a2-ultragpu-2g", 24, 340, "A100-80GB", 2),
        _gcp("a2-ultragpu-4g", 48, 680, "A100-80GB", 4),
        _gcp("a2-ultragpu-8g", 96, 1360, "A100-80GB", 8),
        _gcp("a3-highgpu-8g", 208, 1872, "H100", 8),
        _aws("m6i.2xlarge", 8, 32),
        _aws("m6i.4xlarge", 16, 64),
        _aws("g5.xlarge", 4, 16, "A10G", 1),
        _aws("g5.2xlarge", 8, 32, "A10G", 1),
        _aws("g5.12xlarge", 48, 192, "A10G", 4),
        _aws("g6.xlarge", 4, 16, "L4", 1),
        _aws("g6.2xlarge", 8, 32, "L4", 1),
        _aws("g6.4xlarge", 16, 64, "L4", 1),
        _aws("g6.12xlarge", 48, 192, "L4", 4),
        _aws("p4d.24xlarge", 96, 1152, "A100-40GB", 8),
        _aws("p4de.24xlarge", 96, 1152, "A100-80GB", 8),
        _aws("p5.48xlarge", 192, 2048, "H100", 8),
    )
}
# GKE's node label cloud.google.com/gke-accelerator -> a GPU_MEMORY key.
GKE_ACCELERATORS: dict[str, str] = {
    "nvidia-tesla-t4": "T4",
    "nvidia-tesla-v100": "V100",
    "nvidia-l4": "L4",
    "nvidia-tesla-a100": "A100-40GB",
    "nvidia-a100-80gb": "A100-80GB",
    "nvidia-h100-80gb": "H100",
    "nvidia-h100-mega-80gb": "H100",
    "nvidia-h200-141gb": "H200",
}


def _tiered(total: float, tiers: tuple[tuple[float, float], ...], rest: float) -> float:
    """Sum of ``share x amount`` over consecutive tiers of ``total``, ``rest`` above the last."""
    reserved, left = 0.0, total
    for size, share in tiers:
        reserved += min(left, size) * share
        left = max(left - size, 0.0)
    return reserved + left * rest


def gke_allocatable(machine: Machine) -> tuple[float, float]:
    """(CPUs, GiB) a GKE Standard node of ``machine`` offers pods: GKE reserves 6% of the first
    core, 1% of the next, 0.5% of the next two and 0.25% of the rest; 25% of the first 4 GiB of
    memory, 20% of the next 4, 10% of the next 8, 6% of the next 112 and 2% of the rest, plus a
    100 MiB eviction threshold. System pods (logging, metrics, the GPU device plugin) take some
    of what is left."""
    cpu = machine.vcpus - _tiered(machine.vcpus, ((1, 0.06), (1, 0.01), (2, 0.005)), 0.0025)
    memory = machine.memory_gib - _tiered(machine.memory_gib, ((4, 0.25), (4, 0.2), (8, 0.1), (112, 0.06)), 0.02)
    return cpu, memory - 100 / 1024


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
    "GKE_ACCELERATORS",
    "GPU_MEMORY",
    "KNOWN_MODELS",
    "MACHINES",
    "RAY_DETECTED",
    "Fit",
    "GPUType",
    "Machine",
    "ModelShape",
    "fit_on_gpus",
    "gke_allocatable",
    "gpus_named",
    "model_shape",
    "shape_from_config",
]

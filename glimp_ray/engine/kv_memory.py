"""KV cache memory in bytes: what a token costs, the budget an engine holds, and how it is kept.

One budget covers an HFEngine's sessions' caches and its decode batch's buffers together (every
allocated row and column: padding and spare room count). Admission reserves for the running
requests the most their batch can come to hold (every row as long as the longest will grow: its
context and every token it may still generate), so a running request always finishes; waiting
requests wait for room. Idle sessions are evicted, least recently used first, to make room; the
decode batch takes spare rows and columns only from what is left, and gives them back before any
cached session goes. Between turns of the step loop the engine holds at most its budget; within a
turn a prefill or a join briefly holds the rows it copies twice, and activations come on top:
that is what the share of free device memory left out covers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from glimp_ray.engine.decode_batch import DecodeBatch
    from glimp_ray.engine.scheduler import Scheduler
    from glimp_ray.engine.session import SessionCache

GIB = 1 << 30
DEFAULT_GIB = 4.0  # the budget on a CPU (or any device but CUDA) unless configured
CUDA_FREE_SHARE = 0.8  # of the device memory free once the weights are loaded
logger = logging.getLogger(__name__)


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: layers x KV heads x head dim x 2 (keys and values) x
    the dtype's size. The head dim is the config's ``head_dim`` where it has one (Qwen3's is not
    hidden_size / heads); without ``num_key_value_heads`` every attention head has its own KV."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers * kv_heads * head_dim * 2 * dtype.itemsize)


def kv_budget_bytes(
    device: torch.device, configured: int | None = None, gpu_share: float | None = None, weight_bytes: int = 0
) -> int:
    """The configured size, else a share of the CUDA device's free memory, else 4 GiB.

    ``gpu_share`` < 1 (a replica given a fraction of a GPU, others beside it): at most that share
    of the device's memory, less this engine's own weights, so engines sharing a GPU do not each
    claim most of it."""
    if configured is not None:
        return configured
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free * CUDA_FREE_SHARE
        if gpu_share is not None and 0 < gpu_share < 1:
            budget = min(budget, gpu_share * total * CUDA_FREE_SHARE - weight_bytes)
        return max(int(budget), 0)
    return int(DEFAULT_GIB * GIB)


@dataclass(frozen=True)
class KVBudget:
    """``capacity`` bytes of KV cache at ``bytes_per_token`` a token."""

    capacity: int
    bytes_per_token: int

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.bytes_per_token < 1:
            raise ValueError(
                f"a KV budget needs positive sizes, got {self.capacity} bytes, {self.bytes_per_token}/token"
            )

    @property
    def tokens(self) -> int:
        return self.capacity // self.bytes_per_token


def context_within_budget(budget: KVBudget, given: int | None, model_context: int, name: str) -> int:
    """The context one request may have: its row (and the column a step writes) fits the budget;
    ``given`` (an explicit ``max_context``) it cannot hold is an error, the model's own context is
    lowered to what it holds (with a warning)."""
    fits = budget.tokens - 1
    if (given is not None and given > fits) or fits < 1:
        raise ValueError(
            f"{name}: a KV budget of {budget.capacity / GIB:.3g} GiB holds {max(fits, 0)} tokens "
            f"({budget.bytes_per_token} bytes each), too few for one request of "
            f"{given or model_context} tokens: raise kv_cache_gib or lower max_context"
        )
    if given is None and model_context > fits:
        logger.warning(
            "%s: its KV budget (%.3g GiB) holds %d tokens, fewer than the model's context of %d: "
            "serving contexts up to %d (raise kv_cache_gib for more)",
            name,
            budget.capacity / GIB,
            fits,
            model_context,
            fits,
        )
    return min(given or model_context, fits)


class KVMemory:
    """Keeps one engine within its :class:`KVBudget`: what idle sessions, busy sessions' caches
    and the decode batch hold, against what the running requests reserved."""

    def __init__(
        self, budget: KVBudget, sessions: SessionCache, scheduler: Scheduler, batch: Callable[[], DecodeBatch]
    ):
        self.budget = budget
        self.sessions = sessions
        self.scheduler = scheduler
        self.batch = batch  # the runner's current batch (a failed one is replaced)

    @property
    def held_bytes(self) -> int:
        """Every session's cache and the decode batch's buffers."""
        return self.sessions.cached_bytes + self.batch().nbytes

    def reserved_bytes(self) -> int:
        """What the running requests hold (busy sessions' caches, the batch) or may come to."""
        held = self.batch().nbytes + self.sessions.cached_bytes - self.sessions.idle_bytes
        return max(held, self.scheduler.reserved_tokens() * self.budget.bytes_per_token)

    def evict(self) -> None:
        """Back within the budget: the batch's spare room goes first, then idle sessions (LRU)."""
        batch = self.batch()
        if self.sessions.idle_bytes + batch.nbytes > self.budget.capacity:
            batch.trim()
        self.sessions.evict(self.reserved_bytes())

    def batch_room(self, need: int) -> int:
        """Bytes the decode batch's new buffers may take (its old ones are then freed): idle
        sessions are evicted until what the running requests reserved, and ``need``, fits."""
        self.sessions.evict(max(need, self.scheduler.reserved_tokens() * self.budget.bytes_per_token))
        return self.budget.capacity - self.sessions.idle_bytes

    def free_tokens(self) -> int:
        """Tokens of KV that fit in what nothing holds now (the room a batched prefill pads in)."""
        return max(0, self.budget.capacity - self.held_bytes) // self.budget.bytes_per_token

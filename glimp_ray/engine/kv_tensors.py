"""Per-session KV caches as tensors: ``DynamicCache`` s built around existing tensors, and the
padding masks of rows of different lengths laid side by side (the decode batch and the batched
prefill both use them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, tokens, dim]


def batchable(model: Any) -> bool:
    """Whether this model's cache is made of plain full-attention layers."""
    cache = DynamicCache(config=model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def cache_from(kv: KV) -> DynamicCache:
    """A ``DynamicCache`` of full-attention layers holding these tensors (no copy)."""
    cache = DynamicCache()
    cache.layers = [full_layer(keys, values) for keys, values in kv]
    return cache


def full_layer(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    layer = DynamicLayer()
    # The state ``lazy_initialization`` + ``update`` would leave, without their copy.
    layer.device, layer.is_initialized = keys.device, True
    layer.keys, layer.values = keys, values
    return layer


def layers_of(cache: Any) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def device_of(cache: Any) -> torch.device:
    return cache.layers[0].keys.device  # type: ignore[no-any-return]


def kv_of(cache: DynamicCache | None) -> KV | None:
    if cache is None or cache.get_seq_length() == 0:
        return None
    return layers_of(cache)


def padding_mask(lengths: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
    positions = torch.arange(width, device=device)
    starts = torch.tensor([width - n for n in lengths], device=device)
    return (positions[None, :] >= starts[:, None]).long()

"""The batched prefill: several sessions' new tokens after their own caches, in one forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from glimp_ray.engine.kv_tensors import KV, cache_from, kv_of, layers_of, padding_mask


def _stack(rows: Sequence[KV | None], lengths: Sequence[int], like: KV) -> KV:
    """Right-align each entry's tokens in one zero-filled (padded) tensor per layer; an entry
    may hold several rows already (the current batch); ``None`` is one all-padding row."""
    width = max(lengths)
    sizes = [1 if row is None else row[0][0].shape[0] for row in rows]
    stacked: KV = []
    for layer, (k0, v0) in enumerate(like):
        keys = k0.new_zeros((sum(sizes), k0.shape[1], width, k0.shape[3]))
        values = v0.new_zeros((sum(sizes), v0.shape[1], width, v0.shape[3]))
        offset = 0
        for row, size, length in zip(rows, sizes, lengths, strict=True):
            if row is not None:
                keys[offset : offset + size, :, width - length :] = row[layer][0]
                values[offset : offset + size, :, width - length :] = row[layer][1]
            offset += size
        stacked.append((keys, values))
    return stacked


@torch.inference_mode()
def prefill(
    model: Any, cache_kwarg: str, entries: Sequence[tuple[DynamicCache | None, list[int]]]
) -> tuple[list[DynamicCache], torch.Tensor]:
    """Forward each session's new tokens after its cache, all in one forward.

    Row ``i`` is laid out as ``[padding, cache_i, padding, new_i]``: caches left-padded to the
    longest, new tokens left-padded to the longest, so every row's last column is its last
    token. Returns each session's cache extended by its new tokens (padding removed) and the
    next-token logits ``[rows, vocab]``.
    """
    config = model.config
    if len(entries) == 1:  # nothing to pad: the plain batch-1 forward
        cache, ids = entries[0]
        cache = cache if cache is not None else DynamicCache(config=config)
        device = next(model.parameters()).device
        out = model(
            input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1, **{cache_kwarg: cache}
        )
        return [cache], out.logits[:, -1]
    device = next(model.parameters()).device
    rows = [kv_of(cache) for cache, _ in entries]
    cached = [0 if row is None else row[0][0].shape[2] for row in rows]
    new = [len(ids) for _, ids in entries]
    width, longest = max(cached), max(new)
    batch: DynamicCache
    if width:
        like = next(r for r in rows if r is not None)
        kv = _stack(rows, cached, like)
        batch = cache_from(kv)
    else:
        batch = DynamicCache(config=config)
    inputs = torch.zeros((len(entries), longest), dtype=torch.long, device=device)
    for i, (_, ids) in enumerate(entries):
        inputs[i, longest - len(ids) :] = torch.tensor(ids, device=device)
    cache_mask = padding_mask(cached, width, device)
    input_mask = padding_mask(new, longest, device)
    # Position of each new token: after its own cache (padding gets any position; it is masked).
    positions = torch.tensor(cached, device=device)[:, None] + (
        torch.arange(longest, device=device)[None, :] - (longest - torch.tensor(new, device=device))[:, None]
    )
    out = model(
        input_ids=inputs,
        attention_mask=torch.cat([cache_mask, input_mask], dim=1),
        position_ids=positions.clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
        **{cache_kwarg: batch},
    )
    caches = []
    for i in range(len(entries)):
        kv = []
        for k, v in layers_of(batch):
            keep = [k[i : i + 1, :, width - cached[i] : width], k[i : i + 1, :, width + longest - new[i] :]]
            keep_v = [v[i : i + 1, :, width - cached[i] : width], v[i : i + 1, :, width + longest - new[i] :]]
            kv.append((torch.cat(keep, dim=2), torch.cat(keep_v, dim=2)))
        caches.append(cache_from(kv))
    return caches, out.logits[:, -1]

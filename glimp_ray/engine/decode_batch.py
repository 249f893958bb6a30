"""Batched forwards over per-session KV caches (continuous batching).

Each session keeps its own batch-1 ``DynamicCache``. Sequences that are decoding live together
in a :class:`DecodeBatch`: their caches left-padded into one batched cache with a 2-D
attention mask and explicit position ids, so one forward advances every row by a token. Rows
join and leave at any token (a join or a leave copies the batch once, however many rows it
moves). :func:`~glimp_ray.engine.prefill.prefill` runs the new tokens of several sessions in one forward
and hands each session its cache back.

Transformers' own continuous batching (``generate_batch``, ``init_continuous_batching``) owns
the model, its paged cache and the sampling loop: it exposes no first-token logits (the
glimpse entropy), no stop strings, no per-request seed and no session cache to reuse and crop,
so the engine batches plain forwards instead. Only full-attention ``DynamicLayer`` caches are
batched; other cache types (sliding window, linear attention) run one sequence per forward.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from glimp_ray.engine.kv_tensors import KV, cache_from, device_of, kv_of, layers_of, padding_mask

_KEEP_POSITIONS = 1 << 16  # an empty batch keeps buffers up to this many rows x columns


class _BufferLayer(DynamicLayer):
    """A full-attention cache layer whose tokens live in a preallocated buffer: a decode step
    writes one column in place instead of concatenating a new tensor (as ``DynamicLayer`` does).
    ``keys``/``values`` are views of the active rows and columns."""

    def __init__(self, batch: DecodeBatch, index: int):
        super().__init__()
        self.batch, self.index = batch, index
        self.is_initialized = True
        self.refresh()

    def refresh(self) -> None:
        b = self.batch
        self.keys = b.keys[self.index][: len(b.rows), :, b.start : b.end]
        self.values = b.values[self.index][: len(b.rows), :, b.start : b.end]
        self.device = self.keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        b, n = self.batch, key_states.shape[-2]
        rows = len(b.rows)
        b.keys[self.index][:rows, :, b.end : b.end + n] = key_states
        b.values[self.index][:rows, :, b.end : b.end + n] = value_states
        self.keys = b.keys[self.index][:rows, :, b.start : b.end + n]
        self.values = b.values[self.index][:rows, :, b.start : b.end + n]
        return self.keys, self.values


class DecodeBatch:
    """The rows decoding together, in preallocated per-layer buffers ``[row, head, column, dim]``.

    Rows ``0..len-1`` are in use; every row's real tokens end at column ``end`` (right-aligned)
    and row ``i`` holds the last ``lengths[i]`` of the active columns ``start..end``, so its
    attention mask follows from its length. A step writes one column in place; a joining row is
    copied into the next free row, and a leaving row is copied out and the last row moved into
    its place, so join and leave cost one row, not the batch. Rows grow by doubling; when the
    window needs room it is moved into new buffers about 2.5 times as wide as it is, and buffers
    much bigger than what is in use are reallocated smaller when rows leave. Under a byte budget
    (``room``: given the bytes new buffers need, the bytes they may take) the spare rows and
    columns shrink to what fits, and :meth:`trim` gives them back; :attr:`nbytes` is what the
    buffers hold, spare room included.

    A batch of one row decodes on that session's own cache, as the unbatched engine does: a
    lone request pays nothing for batching. It moves into the buffers when a second row joins.
    """

    def __init__(self, model: Any, cache_kwarg: str = "past_key_values", room: Callable[[int], int] | None = None):
        self.model = model
        self.cache_kwarg = cache_kwarg
        self.room = room
        self.rows: list[Hashable] = []
        self.lengths: list[int] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.start = self.end = 0
        self.cache: DynamicCache | None = None  # what the model sees
        self.solo: DynamicCache | None = None  # the one row's own cache, while it is alone

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    @property
    def nbytes(self) -> int:
        """Bytes of KV the batch holds: every row and column of its buffers (kept, empty, while a
        lone row decodes on its own cache), and that cache."""
        held = sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))
        return held + (sum(k.nbytes + v.nbytes for k, v in layers_of(self.solo)) if self.solo is not None else 0)

    @torch.inference_mode()
    def join(self, entries: Sequence[tuple[Hashable, DynamicCache]]) -> None:
        """Add rows, each with its session's batch-1 cache (copied in, unless it is alone)."""
        if not entries:
            return
        if not self.rows and len(entries) == 1:
            key, cache = entries[0]
            if cache.get_seq_length() == 0:
                raise ValueError("a row joining the decode batch needs a prefilled cache")
            self.rows, self.lengths, self.solo = [key], [cache.get_seq_length()], cache
            return
        if self.solo is not None:  # a second row: the first one moves into the buffers
            (key,), solo = self.rows, self.solo
            self.rows, self.lengths, self.solo = [], [], None
            self._copy_in(key, solo)
        for key, cache in entries:
            self._copy_in(key, cache)
        self._refresh()

    @torch.inference_mode()
    def leave(self, keys: Sequence[Hashable]) -> dict[Hashable, DynamicCache]:
        """Remove rows; each comes back as a batch-1 cache of exactly its real tokens."""
        if self.solo is not None:
            if list(keys) != self.rows:
                raise KeyError(f"{list(keys)} are not the batch's row")
            out: dict[Hashable, DynamicCache] = {self.rows[0]: self.solo}
            self.rows, self.lengths, self.solo = [], [], None
            return out
        out = {}
        for key in keys:
            i = self.rows.index(key)
            first = self.end - self.lengths[i]
            out[key] = cache_from(
                [
                    (k[i : i + 1, :, first : self.end].clone(), v[i : i + 1, :, first : self.end].clone())
                    for k, v in zip(self.keys, self.values, strict=True)
                ]
            )
            last = len(self.rows) - 1
            if i != last:  # the last row moves into the hole
                for k, v in zip(self.keys, self.values, strict=True):
                    k[i, :, self.start : self.end] = k[last, :, self.start : self.end]
                    v[i, :, self.start : self.end] = v[last, :, self.start : self.end]
                self.rows[i], self.lengths[i] = self.rows[last], self.lengths[last]
            self.rows.pop()
            self.lengths.pop()
        if not self.rows:
            # Small buffers stay for the next rows; big ones (after a burst) are freed.
            if self.keys and self.keys[0].shape[0] * self.keys[0].shape[2] > _KEEP_POSITIONS:
                self.clear()
            self.start = self.end
            return out
        self.start = self.end - max(self.lengths)  # columns that are padding in every row go
        self._shrink()
        self._refresh()
        return out

    @torch.inference_mode()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Forward one token per row (in row order); returns the next-token logits ``[rows, vocab]``."""
        assert len(tokens) == len(self.rows) > 0
        device = device_of(self.solo if self.solo is not None else self.cache)
        inputs = torch.tensor(tokens, device=device).view(-1, 1)
        if self.solo is not None:
            out = self.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.solo})
            self.lengths[0] += 1
            return out.logits[:, -1]
        if self._reserve(len(self.rows), self.end - self.start):
            self._refresh()
        kwargs: dict[str, Any] = {}
        if min(self.lengths) < self.end - self.start:  # some row is padded
            kwargs["attention_mask"] = padding_mask([n + 1 for n in self.lengths], self.end - self.start + 1, device)
            kwargs["position_ids"] = torch.tensor(self.lengths, device=device).view(-1, 1)
        out = self.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.cache}, **kwargs)
        self.end += 1  # the layers' views already cover the new column (``_BufferLayer.update``)
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1]

    def clear(self) -> None:
        """Drop every row and free the buffers."""
        self.rows, self.lengths = [], []
        self.keys, self.values, self.cache, self.solo = [], [], None, None
        self.start = self.end = 0

    @torch.inference_mode()
    def trim(self) -> None:
        """Give back spare rows and columns: buffers no row uses are freed, and buffers with rows
        are laid out again within the room they are given."""
        if not self.keys:
            return
        if self.solo is not None or not self.rows:
            self.keys, self.values, self.cache = [], [], None
            return
        width = self.end - self.start
        if self.keys[0].shape[0] * self.keys[0].shape[2] > len(self.rows) * (width + 1):
            self._relayout(len(self.rows), len(self.rows), width)
            self._refresh()

    def _copy_in(self, key: Hashable, cache: DynamicCache) -> None:
        row = kv_of(cache)
        if row is None:
            raise ValueError("a row joining the decode batch needs a prefilled cache")
        length = row[0][0].shape[2]
        self._reserve(len(self.rows) + 1, max(length, self.end - self.start), row)
        self.start = min(self.start, self.end - length)
        i = len(self.rows)
        for layer, (k, v) in enumerate(row):
            self.keys[layer][i, :, self.end - length : self.end] = k[0]
            self.values[layer][i, :, self.end - length : self.end] = v[0]
        self.rows.append(key)
        self.lengths.append(length)

    def _reserve(self, rows: int, width: int, like: KV | None = None) -> bool:
        """Room for ``rows`` rows, ``width`` active columns and one more column after them;
        True when the buffers were reallocated."""
        have_rows = self.keys[0].shape[0] if self.keys else 0
        columns = self.keys[0].shape[2] if self.keys else 0
        if rows <= have_rows and self.end - width >= 0 and self.end + 1 <= columns:
            return False
        self._relayout(rows, have_rows if rows <= have_rows else max(rows, 2 * have_rows, 4), width, like)
        return True

    def _relayout(self, rows: int, spare_rows: int, width: int, like: KV | None = None) -> None:
        """New buffers for ``rows`` rows and a window ``width`` wide. Where the room allows they
        hold ``spare_rows`` rows, room on the window's left for rows half as long again to join
        (at least 32 columns) and as many free columns after it as it is wide (at least 64):
        moving it costs O(1) a step, amortised. Otherwise the spare room shrinks to what fits,
        down to the rows and one free column."""
        assert self.keys or like is not None
        position = _position_bytes(list(zip(self.keys, self.values, strict=True)) if self.keys else like)  # type: ignore[arg-type]
        rows, left, right = self._layout(rows, spare_rows, width, position)
        end, columns, used = left + width, left + width + right, self.end - self.start
        if self.cache is not None:  # the layers' views would keep the old buffers alive
            for layer in self.cache.layers:
                layer.keys = layer.values = None  # type: ignore[union-attr,assignment]
        if self.keys:  # layer by layer: the old buffers go as the new ones come
            for i in range(len(self.keys)):
                self.keys[i] = _moved(self.keys[i], rows, columns, self.start, self.end, end)
                self.values[i] = _moved(self.values[i], rows, columns, self.start, self.end, end)
        else:
            assert like is not None
            self.keys = [k.new_zeros((rows, k.shape[1], columns, k.shape[3])) for k, _ in like]
            self.values = [v.new_zeros((rows, v.shape[1], columns, v.shape[3])) for _, v in like]
        self.start, self.end = end - used, end

    def _layout(self, rows: int, spare_rows: int, width: int, position: int) -> tuple[int, int, int]:
        """Rows, free columns left and right of the window: with spare room, else within ``room``."""
        left, right = width // 2 + 32, width + 64
        if self.room is None:
            return spare_rows, left, right
        fits = self.room(rows * (width + 1) * position) // position  # row-columns the budget leaves
        if spare_rows * (left + width + right) <= fits:
            return spare_rows, left, right
        if rows * (left + width + right) <= fits:
            return rows, left, right
        return rows, 0, min(right, max(1, fits // rows - width))

    def _shrink(self) -> None:
        """After rows left: buffers much bigger than what is in use are reallocated smaller."""
        rows, columns, width = self.keys[0].shape[0], self.keys[0].shape[2], self.end - self.start
        if rows > max(8, 4 * len(self.rows)) or columns > 5 * (width + 64):
            self._relayout(len(self.rows), max(2 * len(self.rows), 4), width)

    def _refresh(self) -> None:
        """Point the cache the model sees at the active rows and columns."""
        if self.cache is None or len(self.cache.layers) != len(self.keys):
            self.cache = DynamicCache()
            self.cache.layers = [_BufferLayer(self, i) for i in range(len(self.keys))]
        for layer in self.cache.layers:
            layer.refresh()  # type: ignore[union-attr]


def _position_bytes(kv: KV) -> int:
    """Bytes one row's column takes across every layer (keys and values)."""
    return sum(k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size() for k, v in kv)


def _moved(buffer: torch.Tensor, rows: int, columns: int, start: int, end: int, new_end: int) -> torch.Tensor:
    """A bigger buffer holding ``buffer``'s active window, now ending at ``new_end``."""
    moved = buffer.new_zeros((rows, buffer.shape[1], columns, buffer.shape[3]))
    keep = min(rows, buffer.shape[0])
    moved[:keep, :, new_end - (end - start) : new_end] = buffer[:keep, :, start:end]
    return moved

"""The model runner: every forward the engine makes (prefills and decode turns), one sequence at
a time or batched, and the decode batch that running requests share.

It knows nothing of sampling, stop rules or results: the engine hands it sequences, it sets
each one's ``logits`` and keeps the sessions' KV caches consistent. A forward that fails reports
the sequences it could not serve through ``fail``; the engine decides what that means.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from glimp_ray.engine.base import EngineError
from glimp_ray.engine.decode_batch import DecodeBatch
from glimp_ray.engine.kv_tensors import batchable
from glimp_ray.engine.prefill import prefill
from glimp_ray.engine.sequence import Sequence
from glimp_ray.engine.session import Session

logger = logging.getLogger(__name__)
Fail = Callable[[Sequence, BaseException], None]


class ModelRunner:
    """Forwards of one causal LM over per-session caches; ``batching`` off (or a cache type that
    cannot be batched) runs one sequence per forward. Under a KV budget, ``room`` is the decode
    batch's (see :class:`DecodeBatch`) and ``free_tokens`` bounds a batched prefill's padding."""

    def __init__(
        self,
        model: Any,
        batching: bool,
        max_batch_tokens: int,
        room: Callable[[int], int] | None = None,
        free_tokens: Callable[[], int] | None = None,
    ):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.model = model
        self.device = next(model.parameters()).device
        self.max_batch_tokens = max_batch_tokens
        self.batching = batching and batchable(model)
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.room, self.free_tokens = room, free_tokens
        self.batch = DecodeBatch(model, self.cache_kwarg, room)
        self.leaving: list[Sequence] = []  # finished rows, taken out of the batch together
        self.forwarded_tokens = 0  # every token ever run through the model, for accounting

    @torch.inference_mode()
    def forward(self, session: Session, token_ids: list[int]) -> torch.Tensor:
        """One sequence, one forward (the unbatched path); the last position's logits."""
        if session.cache is None:
            session.cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([token_ids], device=self.device)
        out = self.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: session.cache})
        session.kv_len += len(token_ids)
        self.forwarded_tokens += len(token_ids)
        return out.logits[0, -1]

    # -- prefill -----------------------------------------------------------------------

    def prefill(self, seqs: list[Sequence], fail: Fail) -> None:
        """Forward each sequence's ``prefill`` tokens, in forwards of several requests within
        ``max_batch_tokens`` padded positions; a forward that fails is retried one by one."""
        if not self.batching:
            for seq in seqs:
                self._prefill_alone(seq, fail)
            return
        for group in self._prefill_groups(seqs):
            if len(group) == 1:
                self._prefill_alone(group[0], fail)
                continue
            try:
                entries = [(seq.live_session.cache, seq.prefill) for seq in group]
                caches, logits = prefill(self.model, self.cache_kwarg, entries)
            except Exception:
                logger.exception("batched prefill of %d requests failed; prefilling them one by one", len(group))
                for seq in group:
                    self._prefill_alone(seq, fail)
                continue
            for seq, cache, row in zip(group, caches, logits, strict=True):
                seq.live_session.cache = cache
                seq.live_session.kv_len += len(seq.prefill)
                self.forwarded_tokens += len(seq.prefill)
                seq.logits = row

    def _prefill_groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Requests of similar length together, each group padded within ``max_batch_tokens``
        (and the KV budget's free room)."""
        limit = self.max_batch_tokens if self.free_tokens is None else min(self.max_batch_tokens, self.free_tokens())
        groups: list[list[Sequence]] = []
        widest = longest = 0
        for seq in sorted(seqs, key=lambda s: (s.live_session.kv_len, len(s.prefill))):
            cached, new = seq.live_session.kv_len, len(seq.prefill)
            size = (len(groups[-1]) + 1) * (max(widest, cached) + max(longest, new)) if groups else 0
            if not groups or size > limit:
                groups.append([])
                widest = longest = 0
            groups[-1].append(seq)
            widest, longest = max(widest, cached), max(longest, new)
        return groups

    def _prefill_alone(self, seq: Sequence, fail: Fail) -> None:
        try:
            seq.logits = self.forward(seq.live_session, seq.prefill)
        except Exception as exc:
            fail(seq, exc)

    # -- decode ------------------------------------------------------------------------

    def decode(self, seqs: list[Sequence], fail: Fail) -> None:
        """Forward each sequence's ``feed`` token: one batched forward, or one each. When the
        batched forward fails, the batch is dropped and every one of ``seqs`` fails."""
        if not seqs:
            return
        if not self.batching:
            for seq in seqs:
                try:
                    seq.logits = self.forward(seq.live_session, [seq.feed])
                except Exception as exc:
                    fail(seq, exc)
            return
        try:
            joining = [seq for seq in seqs if seq not in self.batch]
            self.batch.join([(seq, seq.live_session.cache) for seq in joining])
            for seq in joining:
                seq.live_session.cache = None  # the batch holds it until the request leaves
            if len(self.batch) != len(seqs):
                raise EngineError(f"decode batch has {len(self.batch)} rows for {len(seqs)} decoding requests")
            rows: list[Sequence] = list(self.batch.rows)  # type: ignore[arg-type]
            logits = self.batch.step([seq.feed for seq in rows])
        except Exception as exc:
            logger.exception("batched decode failed; failing its requests")
            self.reset()
            for seq in seqs:
                fail(seq, exc)
            return
        self.forwarded_tokens += len(rows)
        for seq, row in zip(rows, logits, strict=True):
            seq.live_session.kv_len += 1
            seq.logits = row

    def retire(self, seq: Sequence) -> None:
        """A finished request leaves the batch at the next :meth:`flush`."""
        if seq in self.batch:
            self.leaving.append(seq)

    def flush(self) -> list[Sequence]:
        """Finished rows leave the batch together; their sessions get their caches back. When
        that fails the batch is dropped: returns the requests that lost their row with it."""
        leaving = [seq for seq in self.leaving if seq in self.batch]
        self.leaving = []
        if not leaving:
            return []
        try:
            caches = self.batch.leave(leaving)
        except Exception:
            # Its rows' caches are gone (their sessions prefill afresh).
            logger.exception("leaving the decode batch failed")
            return self.reset()
        for row, cache in caches.items():
            row.live_session.cache = cache  # type: ignore[attr-defined]
        return []

    def drop(self, seq: Sequence) -> list[Sequence]:
        """Take a failed request's row out (its cache is dropped with its session); returns the
        other requests that lost their rows if the batch had to be dropped."""
        if seq not in self.batch:
            return []
        try:
            self.batch.leave([seq])
        except Exception:
            logger.exception("leaving the decode batch failed")
            return [other for other in self.reset() if other is not seq]
        return []

    def reset(self) -> list[Sequence]:
        """Drop the decode batch; returns the requests that had a row in it."""
        rows: list[Sequence] = list(self.batch.rows)  # type: ignore[arg-type]
        self.batch = DecodeBatch(self.model, self.cache_kwarg, self.room)
        self.leaving = []
        for seq in rows:
            seq.live_session.cache = None  # the next request of the session prefills from scratch
        return rows

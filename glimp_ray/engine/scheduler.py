"""Request queue and admission, in the manner of nano-vllm's scheduler.

Requests wait in FIFO order and are admitted while fewer than ``max_running`` are in
flight and the decode batch has room: running requests and the candidate, padded to the
longest, within ``max_batch_tokens`` KV positions, and, with a KV budget, the most their batch
can come to hold (every row as long as the longest will grow) within its bytes. A request whose
session is busy (another call for the same session is running) waits without blocking the
requests behind it, so nothing starves: running requests finish within their token budget, which
frees a place for the oldest waiting one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from glimp_ray.engine.kv_memory import KVBudget
from glimp_ray.engine.sequence import DoneCallback, Sequence
from glimp_ray.engine.session import SessionCache
from glimp_ray.engine.text import request_chars
from glimp_ray.types import StepRequest

__all__ = ["DoneCallback", "Scheduler", "Sequence"]


class Scheduler:
    """Waiting queue and running set; the engine's step loop drives it."""

    def __init__(
        self,
        max_running: int,
        max_batch_tokens: int = 1 << 62,
        sessions: SessionCache | None = None,
        budget: KVBudget | None = None,
        max_context: int = 1 << 62,
    ):
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.max_running = max_running
        self.max_batch_tokens = max_batch_tokens
        self.sessions = sessions
        self.budget = budget
        self.max_context = max_context  # no row grows past it: the engine clips generation there
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def admit(
        self,
        is_busy: Callable[[str], bool],
        has_room: Callable[[Sequence], bool] = lambda seq: True,
        limit: int | None = None,
    ) -> list[Sequence]:
        """Move waiting requests to running (at most ``limit``), oldest first, skipping busy sessions."""
        admitted: list[Sequence] = []
        deferred: deque[Sequence] = deque()
        while (
            self.waiting
            and len(self.running) < self.max_running
            and (not self.running or has_room(self.waiting[0]))
            and (limit is None or len(admitted) < limit)
        ):
            seq = self.waiting.popleft()
            if seq.aborted:
                continue
            if is_busy(seq.request.session_id) or any(s.request.session_id == seq.request.session_id for s in admitted):
                deferred.append(seq)
                continue
            seq.admitted = time.perf_counter()
            self.running.append(seq)
            admitted.append(seq)
        self.waiting.extendleft(reversed(deferred))
        return admitted

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)

    def requeue(self, seq: Sequence) -> None:
        """An admitted request goes back to the head of the queue (it did not fit after all)."""
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def admit_one(self) -> Sequence | None:
        """The oldest admissible request, moved to running: one at a time, so each admission
        sees the context of those admitted before it."""
        admitted = self.admit(self.session_busy, self.has_room, limit=1)
        return admitted[0] if admitted else None

    def session_busy(self, session_id: str) -> bool:
        session = self.sessions.peek(session_id) if self.sessions is not None else None
        return session is not None and session.busy

    def has_room(self, candidate: Sequence) -> bool:
        """Whether the running requests and ``candidate``, padded to the longest, stay within
        ``max_batch_tokens`` KV positions (what the decode batch will hold)."""
        longest = max((seq.context_len for seq in self.running), default=0)
        longest = max(longest, self.context_estimate(candidate.request))
        return (len(self.running) + 1) * longest <= self.max_batch_tokens and self.within_budget(candidate)

    def within_budget(self, candidate: Sequence | None = None) -> bool:
        """Whether what the running requests (and ``candidate``) reserve fits the KV budget."""
        return (
            self.budget is None or self.reserved_tokens(candidate) * self.budget.bytes_per_token <= self.budget.capacity
        )

    def reserved_tokens(self, candidate: Sequence | None = None) -> int:
        """KV positions the decode batch can come to hold for the running requests (and
        ``candidate``): every row as long as the longest will grow, and the column a step writes.
        A candidate not yet tokenized counts only what it may generate: padding multiplies a
        loose bound on its context by the rows, so the engine checks again once it is tokenized."""
        finals = [self._final_len(seq.context_tokens, seq) for seq in self.running]
        if candidate is not None:
            finals.append(self._final_len(candidate.context_tokens, candidate))
        return len(finals) * (max(finals) + 1) if finals else 0

    def _final_len(self, context: int, seq: Sequence) -> int:
        generate = seq.request.generate
        return min(context + (generate.max_tokens if generate is not None else 0), self.max_context)

    def context_estimate(self, request: StepRequest) -> int:
        """An upper bound on the tokens a request brings, before it is tokenized: at most one
        per character of its text, and at most its session's tokens plus the transcript."""
        estimate = request_chars(request)
        session = self.sessions.peek(request.session_id) if self.sessions is not None else None
        if session is not None and session.tokens:
            estimate = min(estimate, len(session.tokens) + len(request.transcript))
        return estimate

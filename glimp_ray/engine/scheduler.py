"""Request queue and admission, in the manner of nano-vllm's scheduler.

Requests wait in FIFO order and are admitted while fewer than ``max_running`` are in
flight and the engine has room (its decode batch's memory bound). A request whose session is
busy (another call for the same session is running) waits without blocking the requests
behind it, so nothing starves: running requests finish within their token budget, which
frees a place for the oldest waiting one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from glimp_ray.engine.sequence import DoneCallback, Sequence

__all__ = ["DoneCallback", "Scheduler", "Sequence"]


class Scheduler:
    """Waiting queue and running set; the engine's step loop drives it."""

    def __init__(self, max_running: int):
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        self.max_running = max_running
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

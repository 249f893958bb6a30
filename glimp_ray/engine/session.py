"""Per-session token history and KV cache, with LRU bounds.

A session keeps the tokens it has seen, the text they cover and the KV cache of all of
them but possibly the last (a sampled token is only forwarded if decoding continues).
A new request is matched against the stored text: tokens whose text lies inside the
longest common prefix are reused, the rest are cropped, and only unseen text is
tokenized. The engine's own generated tokens are therefore never re-tokenized.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glimp_ray.engine.kv_memory import KVBudget


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search over C-level comparisons)."""
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Session:
    """Invariants: ``len(tokens) == len(ends)``; ``ends`` is non-decreasing and ends at
    ``len(text)``; the KV cache covers ``tokens[:kv_len]`` with ``kv_len <= len(tokens)``.
    ``ends[i]`` is the length of the text covered by ``tokens[: i + 1]``."""

    session_id: str
    tokens: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    text: str = ""
    cache: Any = None
    kv_len: int = 0
    busy: bool = False

    def match(self, text: str) -> int:
        """Crop to the tokens whose text is a prefix of ``text``; returns how many remain."""
        common = common_prefix_len(self.text, text)
        keep = bisect.bisect_right(self.ends, common)
        self.truncate(keep)
        return keep

    def truncate(self, keep: int) -> None:
        """Keep only the first ``keep`` tokens (and their text and KV)."""
        if keep >= len(self.tokens):
            return
        del self.tokens[keep:]
        del self.ends[keep:]
        self.text = self.text[: self.ends[-1]] if self.ends else ""
        self.crop_kv(keep)

    def crop_kv(self, length: int) -> None:
        if self.kv_len > length:
            try:
                if length == 0:
                    raise ValueError("nothing to keep")
                # transformers >= 5 crops by a negative count of tokens to remove.
                self.cache.crop(length - self.kv_len)
                self.kv_len = length
            except (ValueError, RuntimeError):
                # Sliding-window and linear-attention caches cannot always be cropped;
                # the tokens stay and are prefilled again from scratch.
                self.cache = None
                self.kv_len = 0

    def append(self, token_ids: list[int], text: str, relative_ends: list[int]) -> None:
        """Add tokens covering ``text``; ``relative_ends`` are offsets into ``text``."""
        base = len(self.text)
        self.tokens.extend(token_ids)
        self.ends.extend(base + e for e in relative_ends)
        self.text += text


class SessionCache:
    """Sessions in LRU order, bounded by count, by total cached tokens and, with a ``budget``,
    by the bytes of their KV caches (with what the caller reserves beside them)."""

    def __init__(self, max_sessions: int, max_tokens: int, budget: KVBudget | None = None):
        if max_sessions < 1 or max_tokens < 1:
            raise ValueError("max_sessions and max_cached_tokens must be >= 1")
        self.max_sessions = max_sessions
        self.max_tokens = max_tokens
        self.budget = budget
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __iter__(self) -> Iterator[Session]:
        """The sessions, least recently used first."""
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> Session:
        """The session (created if new), marked most recently used."""
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = Session(session_id)
        self._sessions.move_to_end(session_id)
        return session

    def peek(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def release(self, session_id: str) -> bool:
        """Drop an idle session; a busy one is kept (its request still needs it)."""
        session = self._sessions.get(session_id)
        if session is None or session.busy:
            return False
        del self._sessions[session_id]
        return True

    @property
    def cached_tokens(self) -> int:
        return sum(len(s.tokens) for s in self._sessions.values())

    @property
    def cached_bytes(self) -> int:
        """Bytes of the KV caches the sessions hold (a decoding session's is the batch's)."""
        return sum(self._kv_bytes(s) for s in self._sessions.values())

    @property
    def idle_bytes(self) -> int:
        """Bytes of the idle sessions' KV caches: what eviction can free."""
        return sum(self._kv_bytes(s) for s in self._sessions.values() if not s.busy)

    def _kv_bytes(self, session: Session) -> int:
        if self.budget is None or session.cache is None:
            return 0
        return session.kv_len * self.budget.bytes_per_token

    def evict(self, reserved_bytes: int = 0) -> list[str]:
        """Evict least-recently-used idle sessions until within bounds: with a budget, until the
        idle sessions' KV and ``reserved_bytes`` (what the running requests hold) fit in it."""
        evicted = []
        total = self.cached_tokens
        room = self.budget.capacity - reserved_bytes if self.budget is not None else 0
        idle = self.idle_bytes
        for session_id, session in list(self._sessions.items()):
            if len(self._sessions) <= self.max_sessions and total <= self.max_tokens and idle <= room:
                break
            if session.busy:
                continue
            total -= len(session.tokens)
            idle -= self._kv_bytes(session)
            del self._sessions[session_id]
            evicted.append(session_id)
        return evicted

"""Per-key token buckets on requests and generated tokens, with OpenAI's ``x-ratelimit-*`` headers.

Pure logic over an injected monotonic clock (tests drive it; nothing here sleeps). Each router
replica holds its own buckets, so a key's configured rates and bursts are divided by the number
of router replicas: Serve's proxies spread requests about evenly over them, and the key's total
is then about what was configured (docs/flow-control.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deployments.config import RateLimits

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """Holds up to ``capacity``, refilled at ``rate`` per second. A charge larger than the capacity
    is let in once the bucket is full and leaves it in debt (the key then waits the debt off), so a
    large request is slowed, never refused for good."""

    capacity: float
    rate: float
    level: float
    updated: float

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        if capacity <= 0 or rate <= 0:
            raise ValueError("a bucket needs a positive capacity and rate")
        return cls(capacity, rate, capacity, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (0: now)."""
        self._refill(now)
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level

    def until_full(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self.level) / self.rate


@dataclass
class KeyBuckets:
    """A key's request and token buckets (``None``: that one is not limited)."""

    requests: TokenBucket | None
    tokens: TokenBucket | None
    limits: RateLimits


@dataclass(frozen=True)
class Refusal:
    """Why a request was not let in: which bucket (``requests`` or ``tokens``) and how long until
    it has room."""

    bucket: str
    wait_s: float
    limit: float
    requested: int


class RateLimiter:
    """The buckets of every limited key on this router replica."""

    def __init__(self, limits: Mapping[str, RateLimits], replicas: int = 1, clock: Clock | None = None):
        import time

        self.clock = clock or time.monotonic
        self.replicas = replicas
        now = self.clock()
        self.keys: dict[str, KeyBuckets] = {}
        for name, limit in limits.items():
            requests = _bucket(limit.requests_per_minute, limit.request_burst, replicas, now, least=1.0)
            tokens = _bucket(limit.tokens_per_minute, limit.token_burst, replicas, now, least=1.0)
            if requests is not None or tokens is not None:
                self.keys[name] = KeyBuckets(requests, tokens, limit)

    def admit(self, key: str | None, tokens: int) -> Refusal | None:
        """Take one request and ``tokens`` from ``key``'s buckets, or neither and say why not."""
        buckets = self.keys.get(key) if key is not None else None
        if buckets is None:
            return None
        now = self.clock()
        for which, amount, bucket, limit in (
            ("requests", 1, buckets.requests, buckets.limits.requests_per_minute),
            ("tokens", tokens, buckets.tokens, buckets.limits.tokens_per_minute),
        ):
            if bucket is not None and limit is not None:
                wait = bucket.wait(amount, now)
                if wait > 0:
                    return Refusal(which, wait, limit, amount)
        if buckets.requests is not None:
            buckets.requests.take(1, now)
        if buckets.tokens is not None:
            buckets.tokens.take(tokens, now)
        return None

    def give_back(self, key: str | None, tokens: int) -> None:
        """Return tokens charged for a request that generated none (refused before any model call)."""
        buckets = self.keys.get(key) if key is not None else None
        if buckets is not None and buckets.tokens is not None and tokens > 0:
            buckets.tokens.give_back(tokens, self.clock())

    def headers(self, key: str | None) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for ``key``: the configured limit per minute, what is
        left (this replica's bucket times the replicas) and when it is full again."""
        buckets = self.keys.get(key) if key is not None else None
        if buckets is None:
            return {}
        now = self.clock()
        headers: dict[str, str] = {}
        for which, bucket, limit in (
            ("requests", buckets.requests, buckets.limits.requests_per_minute),
            ("tokens", buckets.tokens, buckets.limits.tokens_per_minute),
        ):
            if bucket is None or limit is None:
                continue
            headers[f"x-ratelimit-limit-{which}"] = _number(limit)
            headers[f"x-ratelimit-remaining-{which}"] = str(max(0, math.floor(bucket.available(now) * self.replicas)))
            headers[f"x-ratelimit-reset-{which}"] = duration(bucket.until_full(now))
        return headers


def _bucket(per_minute: float | None, burst: int | None, replicas: int, now: float, least: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    capacity = (burst if burst is not None else per_minute) / replicas
    return TokenBucket.full(max(capacity, least), per_minute / 60.0 / replicas, now)


def retry_headers(wait_s: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (at least 1, as HTTP wants an integer) and OpenAI's
    ``retry-after-ms``, which its clients read first."""
    return {"retry-after": str(max(1, math.ceil(wait_s))), "retry-after-ms": str(max(1, math.ceil(wait_s * 1000)))}


def duration(seconds: float) -> str:
    """As OpenAI writes resets: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

"""Per-key token buckets on a clock the tests drive: nothing sleeps, every count is exact."""

from __future__ import annotations

import pytest

from deployments.config import RateLimits
from deployments.rate_limits import RateLimiter, TokenBucket, duration, retry_headers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket.full(capacity=10, rate=2, now=0)
    assert bucket.wait(10, 0) == 0
    bucket.take(10, 0)
    assert bucket.wait(4, 0) == pytest.approx(2.0)  # 4 tokens at 2/s
    assert bucket.wait(4, 1.5) == pytest.approx(0.5)
    assert bucket.available(100) == 10  # never above the capacity
    bucket.take(3, 100)
    bucket.give_back(5, 100)
    assert bucket.available(100) == 10


def test_a_charge_above_the_capacity_waits_for_a_full_bucket_then_leaves_a_debt() -> None:
    bucket = TokenBucket.full(capacity=10, rate=1, now=0)
    bucket.take(1, 0)
    assert bucket.wait(25, 0) == pytest.approx(1.0)  # not refused for good: it waits until the bucket is full
    bucket.take(25, 1)
    assert bucket.available(1) == pytest.approx(-15)
    assert bucket.wait(1, 1) == pytest.approx(16.0)  # the debt is waited off first


def test_a_key_over_its_request_bucket_waits_and_one_under_it_does_not() -> None:
    clock = Clock()
    limits = {"tight": RateLimits(requests_per_minute=6, request_burst=2), "open": RateLimits()}
    limiter = RateLimiter(limits, clock=clock)
    assert limiter.admit("tight", 0) is None and limiter.admit("tight", 0) is None
    refusal = limiter.admit("tight", 0)
    assert refusal is not None and refusal.bucket == "requests"
    assert refusal.wait_s == pytest.approx(10.0)  # 6 per minute: one every 10 s
    clock.now += 9.9
    assert limiter.admit("tight", 0) is not None
    clock.now += 0.1
    assert limiter.admit("tight", 0) is None
    for _ in range(100):  # a key without limits, and no key at all, are never refused
        assert limiter.admit("open", 10_000) is None and limiter.admit(None, 10_000) is None
    assert "open" not in limiter.keys


def test_tokens_are_charged_at_admission_and_a_refusal_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(
        {"k": RateLimits(requests_per_minute=60, tokens_per_minute=600, token_burst=100)}, clock=clock
    )
    assert limiter.admit("k", 70) is None
    refusal = limiter.admit("k", 70)
    assert refusal is not None and refusal.bucket == "tokens" and refusal.requested == 70
    assert refusal.wait_s == pytest.approx(4.0)  # 40 tokens short at 10/s
    headers = limiter.headers("k")
    assert headers["x-ratelimit-remaining-requests"] == "59"  # the refused request took no request
    assert headers["x-ratelimit-remaining-tokens"] == "30"
    assert headers["x-ratelimit-limit-tokens"] == "600" and headers["x-ratelimit-reset-tokens"] == "7s"
    limiter.give_back("k", 70)  # refused by the handler: nothing generated
    assert limiter.admit("k", 70) is None


def test_each_router_replica_enforces_its_share_of_a_key() -> None:
    clock = Clock()
    limiter = RateLimiter({"k": RateLimits(requests_per_minute=120, request_burst=4)}, replicas=2, clock=clock)
    assert [limiter.admit("k", 0) is None for _ in range(3)] == [True, True, False]  # burst 4 over 2 replicas
    refusal = limiter.admit("k", 0)
    assert refusal is not None and refusal.wait_s == pytest.approx(1.0)  # 60 per minute on this replica
    assert limiter.headers("k")["x-ratelimit-limit-requests"] == "120"  # the key's limit, as configured


def test_retry_after_is_whole_seconds_and_resets_read_as_openai_writes_them() -> None:
    assert retry_headers(0.2) == {"retry-after": "1", "retry-after-ms": "200"}
    assert retry_headers(22.01) == {"retry-after": "23", "retry-after-ms": "22010"}
    assert [duration(s) for s in (0.02, 1.5, 7, 360)] == ["20ms", "1.5s", "7s", "6m0s"]

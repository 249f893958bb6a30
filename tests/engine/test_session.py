from __future__ import annotations

import pytest

from glimp_ray.engine.session import Session, SessionCache, common_prefix_len


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [("", "abc", 0), ("abc", "abcdef", 3), ("abcdef", "abc", 3), ("abxd", "abyd", 2), ("x", "y", 0)],
)
def test_common_prefix_len(a: str, b: str, n: int) -> None:
    assert common_prefix_len(a, b) == n


def session_with(pieces: list[str]) -> Session:
    session = Session("s")
    for i, piece in enumerate(pieces):
        session.append([i], piece, [len(piece)])
    session.kv_len = len(pieces)
    return session


class FakeCache:
    def __init__(self, length: int) -> None:
        self.length = length

    def crop(self, delta: int) -> None:
        assert delta < 0
        self.length += delta


def test_match_keeps_tokens_inside_the_common_prefix() -> None:
    session = session_with(["ab", "cd", "ef"])
    session.cache = FakeCache(3)
    assert session.match("abcdXX") == 2  # "ef" diverged
    assert session.tokens == [0, 1] and session.text == "abcd" and session.kv_len == 2
    assert session.cache.length == 2
    assert session.match("abcdef") == 2  # nothing lost beyond the crop
    assert session.match("abc") == 1  # a token is kept only if all its text matches
    assert session.match("zzz") == 0 and session.cache is None


def test_cache_evicts_least_recently_used_by_count_and_tokens() -> None:
    cache = SessionCache(max_sessions=2, max_tokens=100)
    for sid in ("a", "b", "c"):
        cache.get(sid).append([1, 2], "xy", [1, 2])
    cache.get("a")  # touch: "b" is now the oldest
    assert cache.evict() == ["b"] and "a" in cache and "c" in cache

    cache = SessionCache(max_sessions=10, max_tokens=5)
    for sid in ("a", "b", "c"):
        cache.get(sid).append([1, 2], "xy", [1, 2])
    cache.get("a").busy = True
    assert cache.evict() == ["b"]  # busy "a" is skipped though oldest
    assert cache.cached_tokens == 4


def test_release_keeps_busy_sessions() -> None:
    cache = SessionCache(4, 100)
    cache.get("a").busy = True
    assert not cache.release("a") and "a" in cache
    cache.get("a").busy = False
    assert cache.release("a") and "a" not in cache
    assert not cache.release("missing")


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SessionCache(0, 10)


class UncroppableCache:
    """Like a sliding-window cache past its window: cropping is refused."""

    def crop(self, delta: int) -> None:
        raise RuntimeError("crop was called but the sliding window size was already reached")


def test_a_cache_that_cannot_be_cropped_is_dropped_not_fatal() -> None:
    session = session_with(["ab", "cd", "ef"])
    session.cache = UncroppableCache()
    assert session.match("abcdXX") == 2
    # The matching tokens stay; their KV is rebuilt by the next prefill.
    assert session.tokens == [0, 1] and session.cache is None and session.kv_len == 0

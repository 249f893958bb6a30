from __future__ import annotations

import random

import pytest

from glimp_ray.policies import LARGE, SMALL, EntropyPolicy, make_policy


def test_entropy_policy_routes_strictly_above_threshold() -> None:
    policy = make_policy("entropy", threshold=1.0)
    rng = random.Random(0)
    assert policy.needs_glimpse
    assert policy(0.3, rng) == SMALL
    assert policy(1.0, rng) == SMALL  # at most τ stays small
    assert policy(1.0001, rng) == LARGE
    with pytest.raises(ValueError, match="needs the glimpse"):
        EntropyPolicy(1.0)(None, rng)


def test_fixed_policies_ignore_entropy() -> None:
    rng = random.Random(0)
    assert make_policy("small")(99.0, rng) == SMALL
    assert make_policy("large")(0.0, rng) == LARGE
    assert not make_policy("small").needs_glimpse


def test_random_policy_is_seeded_and_has_its_rate() -> None:
    policy = make_policy("random", random_p=0.3)
    first = [policy(None, r) for r in [random.Random(5)] for _ in range(2000)]
    again = [policy(None, r) for r in [random.Random(5)] for _ in range(2000)]
    assert first == again
    assert 0.27 < first.count(LARGE) / len(first) < 0.33


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"name": "nope"}, "unknown policy"), ({"name": "random", "random_p": 1.5}, "random_p")],
)
def test_bad_policies_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_policy(**kwargs)  # type: ignore[arg-type]

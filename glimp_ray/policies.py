"""Routing policies: small pure callables deciding which model writes a step.

A policy sees the glimpse entropy (``None`` when it did not ask for a glimpse) and a
seeded random generator, and returns :data:`SMALL` or :data:`LARGE`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator

Route = Literal["small", "large"]
SMALL: Route = "small"
LARGE: Route = "large"
PolicyName = Literal["entropy", "small", "large", "random"]
POLICY_NAMES: tuple[PolicyName, ...] = ("entropy", "small", "large", "random")


def routes_large(entropy: float, threshold: float, at_threshold: bool = False) -> bool:
    """GlimpRouter's rule, defined once: a step whose glimpse entropy exceeds τ goes large;
    with ``at_threshold`` one equal to τ does too (the reference code's ``H >= τ``)."""
    return entropy >= threshold if at_threshold else entropy > threshold


def engine_threshold(threshold: float, at_threshold: bool) -> float:
    """The τ to send an engine, which routes a fused glimpse on ``H > τ``: for ``H >= τ`` the float
    just below τ, since no float lies between the two (``H > below`` is exactly ``H >= τ``)."""
    return math.nextafter(threshold, -math.inf) if at_threshold else threshold


def check_random_p(p: float) -> float:
    """The random baseline's large-step probability, in [0, 1]."""
    if not 0 <= p <= 1:
        raise ValueError(f"random_p must be in [0, 1], got {p}")
    return p


# The same range check for config files and the HTTP API.
RandomP = Annotated[float, AfterValidator(check_random_p)]


class RoutingPolicy(Protocol):
    """Decides the model for one step."""

    @property
    def needs_glimpse(self) -> bool:
        """Whether the policy reads the small model's first-token entropy."""
        ...

    def __call__(self, entropy: float | None, rng: random.Random) -> Route: ...


@dataclass(frozen=True)
class EntropyPolicy:
    """GlimpRouter: the large model writes the step when the glimpse entropy exceeds τ (or, with
    ``at_threshold``, equals it)."""

    threshold: float
    at_threshold: bool = False
    needs_glimpse: bool = True

    def __call__(self, entropy: float | None, rng: random.Random) -> Route:
        if entropy is None:
            raise ValueError("the entropy policy needs the glimpse entropy")
        return LARGE if routes_large(entropy, self.threshold, self.at_threshold) else SMALL


@dataclass(frozen=True)
class FixedPolicy:
    """Every step to one model: the small-only and large-only baselines."""

    route: Route
    needs_glimpse: bool = False

    def __call__(self, entropy: float | None, rng: random.Random) -> Route:
        return self.route


@dataclass(frozen=True)
class RandomPolicy:
    """Each step to the large model with probability ``p`` (the random baseline)."""

    p: float
    needs_glimpse: bool = False

    def __post_init__(self) -> None:
        check_random_p(self.p)

    def __call__(self, entropy: float | None, rng: random.Random) -> Route:
        return LARGE if rng.random() < self.p else SMALL


def make_policy(name: str, threshold: float = 1.0, random_p: float = 0.25, at_threshold: bool = False) -> RoutingPolicy:
    """Build a policy by name: ``entropy``, ``small``, ``large`` or ``random``."""
    if name == "entropy":
        return EntropyPolicy(threshold, at_threshold)
    if name == "small":
        return FixedPolicy(SMALL)
    if name == "large":
        return FixedPolicy(LARGE)
    if name == "random":
        return RandomPolicy(random_p)
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")

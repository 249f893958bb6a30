"""Routing policies: small pure callables deciding which model writes a step.

A *pre-step* policy sees the glimpse's signals (:class:`~glimp_ray.types.GlimpseSignals`:
``None`` when it did not ask for a glimpse) and a seeded random generator, and returns
:data:`SMALL` or :data:`LARGE`:

- ``entropy`` (GlimpRouter): large when the first token's entropy exceeds τ;
- ``top1``: large when the first token's top-1 probability is below τ;
- ``margin``: large when top-1 minus top-2 probability is below τ;
- ``small``, ``large``, ``random``: the baselines.

*Shadow* policies (:func:`check_shadow`, :func:`shadow_decisions`) are pre-step policies computed
beside the acting one from the same glimpse and only recorded: an operator sees what each would
have decided before switching to it.

A policy reading a signal names it (:attr:`RoutingPolicy.signal`), so a fused glimpse routes on
the same rule inside the engine (:func:`glimpse_routes_large`). A NaN or infinite signal raises
:class:`~glimp_ray.engine.base.NonFiniteSignalError`: no route is taken on it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator

from glimp_ray.engine.base import NonFiniteSignalError
from glimp_ray.types import GlimpseSignal, GlimpseSignals, GlimpseSpec

Route = Literal["small", "large"]
SMALL: Route = "small"
LARGE: Route = "large"
PolicyName = Literal["entropy", "top1", "margin", "small", "large", "random"]
POLICY_NAMES: tuple[PolicyName, ...] = ("entropy", "top1", "margin", "small", "large", "random")
# The policies that route on a glimpse signal, and which.
SIGNAL_POLICIES: dict[str, GlimpseSignal] = {"entropy": "entropy", "top1": "top1", "margin": "margin"}


def _finite(value: float, signal: str) -> float:
    if not math.isfinite(value):
        raise NonFiniteSignalError(f"the glimpse's {signal} is {value}: refusing to route on it")
    return value


def routes_large(entropy: float, threshold: float, at_threshold: bool = False) -> bool:
    """GlimpRouter's rule, defined once: a step whose glimpse entropy exceeds τ goes large;
    with ``at_threshold`` one equal to τ does too (the reference code's ``H >= τ``). Offline
    users (planner, simulator) call it as is; a live route goes through :func:`signal_routes_large`,
    which refuses a non-finite signal."""
    return entropy >= threshold if at_threshold else entropy > threshold


def signal_routes_large(signal: GlimpseSignal, value: float, threshold: float, at_threshold: bool = False) -> bool:
    """Every pre-step rule: an entropy above τ, a top-1 probability or a margin below it, goes
    large (with ``at_threshold``, one equal to τ too). A NaN or infinite signal raises
    :class:`NonFiniteSignalError` (a NaN compares false: it would route small silently)."""
    value = _finite(value, signal)
    if signal == "entropy":
        return routes_large(value, threshold, at_threshold)
    return value <= threshold if at_threshold else value < threshold


def glimpse_routes_large(signals: GlimpseSignals, spec: GlimpseSpec) -> bool:
    """Whether a fused glimpse with ``spec`` routes the step away (false without a threshold)."""
    if spec.threshold is None:
        return False
    return signal_routes_large(spec.signal, signals.value(spec.signal), spec.threshold)


def engine_threshold(threshold: float, at_threshold: bool, signal: GlimpseSignal = "entropy") -> float:
    """The τ to send an engine, which routes a fused glimpse strictly (``H > τ``, ``p < τ``): with
    ``at_threshold`` the float just past τ on the small side, since no float lies between the two
    (``H > below`` is exactly ``H >= τ``; ``p < above`` is ``p <= τ``)."""
    if not at_threshold:
        return threshold
    return math.nextafter(threshold, -math.inf if signal == "entropy" else math.inf)


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
        """Whether the policy reads the small model's glimpse."""
        ...

    @property
    def signal(self) -> GlimpseSignal | None:
        """The glimpse signal it routes on (a fused glimpse routes on it in the engine)."""
        ...

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route: ...


@dataclass(frozen=True)
class SignalPolicy:
    """A pre-step policy on one glimpse signal: ``entropy`` (GlimpRouter: large when the entropy
    exceeds τ), ``top1`` (large when the first token's probability is below τ) or ``margin``
    (large when top-1 minus top-2 probability is below τ). With ``at_threshold`` a signal equal to
    τ goes large too (the reference code's ``H >= τ``)."""

    signal: GlimpseSignal
    threshold: float
    at_threshold: bool = False
    needs_glimpse: bool = True

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route:
        if glimpse is None:
            raise ValueError(f"the {self.signal} policy needs the glimpse")
        value = glimpse.value(self.signal)
        return LARGE if signal_routes_large(self.signal, value, self.threshold, self.at_threshold) else SMALL


@dataclass(frozen=True)
class FixedPolicy:
    """Every step to one model: the small-only and large-only baselines."""

    route: Route
    needs_glimpse: bool = False
    signal: GlimpseSignal | None = None

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route:
        return self.route


@dataclass(frozen=True)
class RandomPolicy:
    """Each step to the large model with probability ``p`` (the random baseline)."""

    p: float
    needs_glimpse: bool = False
    signal: GlimpseSignal | None = None

    def __post_init__(self) -> None:
        check_random_p(self.p)

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route:
        return LARGE if rng.random() < self.p else SMALL


def make_policy(name: str, threshold: float = 1.0, random_p: float = 0.25, at_threshold: bool = False) -> RoutingPolicy:
    """Build a policy by name: ``entropy``, ``top1``, ``margin`` (each on τ = ``threshold``),
    ``small``, ``large`` or ``random``."""
    if name in SIGNAL_POLICIES:
        return SignalPolicy(SIGNAL_POLICIES[name], threshold, at_threshold)
    if name == "small":
        return FixedPolicy(SMALL)
    if name == "large":
        return FixedPolicy(LARGE)
    if name == "random":
        return RandomPolicy(random_p)
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


# A shadow policy decides from the glimpse alone, with no model work of its own: the signal
# policies, each on its own τ.
Shadow = tuple[tuple[str, float], ...]


def check_shadow(shadow: Mapping[str, float] | Iterable[tuple[str, float]] | None) -> Shadow:
    """Shadow policies as ``(name, τ)`` pairs in name order, from a mapping name → τ (or pairs).

    Only pre-step signal policies (``entropy``, ``top1``, ``margin``) qualify: their decision
    comes from the glimpse the step already took. The baselines have no signal to compare, and a
    shadow ``random`` would draw from the acting policy's generator."""
    if shadow is None:
        return ()
    pairs = list(shadow.items()) if isinstance(shadow, Mapping) else list(shadow)
    allowed = ", ".join(SIGNAL_POLICIES)
    checked: dict[str, float] = {}
    for name, threshold in pairs:
        if name in ("small", "large", "random"):
            raise ValueError(
                f"shadow policy {name!r} reads no glimpse signal; a shadow policy decides from the glimpse: {allowed}"
            )
        if name not in SIGNAL_POLICIES:
            raise ValueError(
                f"unknown shadow policy {name!r}; a shadow policy decides from the glimpse, with no model work of "
                f"its own: {allowed}"
            )
        if name in checked:
            raise ValueError(f"shadow policy {name!r} is given twice")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise ValueError(f"shadow policy {name!r} needs a finite threshold, got {threshold!r}")
        checked[name] = float(threshold)
    return tuple(sorted(checked.items()))


def shadow_decisions(shadow: Shadow, glimpse: GlimpseSignals | None, at_threshold: bool = False) -> dict[str, Route]:
    """What each shadow policy would have decided on this glimpse (``at_threshold``: the preset's
    rule, as for the acting policy). A shadow never fails a step: without a glimpse, or where its
    signal is missing or not finite (a pool that gives the entropy only), it has no decision."""
    if glimpse is None:
        return {}
    decisions: dict[str, Route] = {}
    for name, threshold in shadow:
        signal = SIGNAL_POLICIES[name]
        value = glimpse.value(signal)
        if math.isfinite(value):
            decisions[name] = LARGE if signal_routes_large(signal, value, threshold, at_threshold) else SMALL
    return decisions


@dataclass(frozen=True)
class ShadowTally:
    """Shadow decisions against the acting ones over some steps: per shadow policy, the steps it
    decided, how many it agreed with the acting decision on, and how many it would have sent large."""

    steps: int = 0
    agreed: int = 0
    large: int = 0

    @property
    def agreement(self) -> float:
        return self.agreed / self.steps if self.steps else 0.0

    @property
    def large_fraction(self) -> float:
        return self.large / self.steps if self.steps else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "agreement": self.agreement, "large_fraction": self.large_fraction}


def tally_shadow(steps: Iterable[tuple[Route, Mapping[str, Route]]]) -> dict[str, ShadowTally]:
    """Per shadow policy, its :class:`ShadowTally` over ``(acting route, shadow decisions)`` of steps."""
    tallies: dict[str, ShadowTally] = {}
    for acting, decisions in steps:
        for name, decision in decisions.items():
            t = tallies.get(name, ShadowTally())
            tallies[name] = ShadowTally(t.steps + 1, t.agreed + (decision == acting), t.large + (decision == LARGE))
    return tallies

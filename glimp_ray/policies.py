"""Routing policies: small pure callables deciding which model writes a step.

A *pre-step* policy sees the glimpse's signals (:class:`~glimp_ray.types.GlimpseSignals`:
``None`` when it did not ask for a glimpse) and a seeded random generator, and returns
:data:`SMALL` or :data:`LARGE`:

- ``entropy`` (GlimpRouter): large when the first token's entropy exceeds τ;
- ``top1``: large when the first token's top-1 probability is below τ;
- ``margin``: large when top-1 minus top-2 probability is below τ;
- ``small``, ``large``, ``random``: the baselines.

A *post-step* policy (:class:`PostStepPolicy`) lets the small model write the step, then keeps
it or has the large model rewrite it from the same context:

- ``h_step``: rewrite when the step's mean token entropy exceeds τ;
- ``ppl_step``: rewrite when its perplexity exceeds τ;
- ``min_prob``: rewrite when its least likely sampled token's probability is below τ (STEER-like);
- ``cue``: rewrite when the step starts with a cue word (RelayGen-like; τ unused);
- ``verify``: the large model reads the step and a verification suffix; rewrite when the
  probability it gives the "yes" tokens is below τ (SpecReason-like).

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
from glimp_ray.types import GlimpseSignal, GlimpseSignals, GlimpseSpec, StepSignal, StepSignals

Route = Literal["small", "large"]
SMALL: Route = "small"
LARGE: Route = "large"
PolicyName = Literal[
    "entropy", "top1", "margin", "h_step", "ppl_step", "min_prob", "cue", "verify", "small", "large", "random"
]
POLICY_NAMES: tuple[PolicyName, ...] = (
    "entropy", "top1", "margin", "h_step", "ppl_step", "min_prob", "cue", "verify", "small", "large", "random",
)  # fmt: skip
# The policies that route on a glimpse signal, and which.
SIGNAL_POLICIES: dict[str, GlimpseSignal] = {"entropy": "entropy", "top1": "top1", "margin": "margin"}
# The post-step policies, and the step signal each reads (cue reads the text, verify the large
# model's score).
STEP_SIGNAL_POLICIES: dict[str, StepSignal] = {"h_step": "h_step", "ppl_step": "ppl_step", "min_prob": "min_prob"}
POST_STEP_POLICIES: tuple[str, ...] = ("h_step", "ppl_step", "min_prob", "cue", "verify")
# RelayGen-style cue words: a step opening with one is where reasoning turns.
DEFAULT_CUES: tuple[str, ...] = ("wait", "hmm", "but", "alternatively", "however", "actually")
# SpecReason-style verification: the large model reads the step, then this, and scores "yes".
DEFAULT_VERIFY_SUFFIX = "\n\nIs the step above correct? Answer yes or no: "
DEFAULT_VERIFY_TOKENS: tuple[str, ...] = ("yes", " yes", "Yes", " Yes")


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

    @property
    def post_step(self) -> bool:
        """Whether the small model writes every step first (a :class:`PostStepPolicy`)."""
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
    post_step: bool = False

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
    post_step: bool = False

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route:
        return self.route


@dataclass(frozen=True)
class RandomPolicy:
    """Each step to the large model with probability ``p`` (the random baseline)."""

    p: float
    needs_glimpse: bool = False
    signal: GlimpseSignal | None = None
    post_step: bool = False

    def __post_init__(self) -> None:
        check_random_p(self.p)

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route:
        return LARGE if rng.random() < self.p else SMALL


def step_rewrites(name: str, value: float, threshold: float, at_threshold: bool = False) -> bool:
    """Every post-step rule on a number: a mean entropy (``h_step``) or perplexity (``ppl_step``)
    above τ, a lowest token probability (``min_prob``) or a verification score (``verify``) below
    it, has the step rewritten (with ``at_threshold``, one equal to τ too). A NaN or infinite
    value raises :class:`NonFiniteSignalError`."""
    value = _finite(value, name)
    if name in ("h_step", "ppl_step"):
        return value >= threshold if at_threshold else value > threshold
    return value <= threshold if at_threshold else value < threshold


def opens_with_cue(text: str, cues: Iterable[str]) -> bool:
    """Whether ``text`` starts (after white space, any case) with one of ``cues`` as a whole word."""
    head = text.lstrip().lower()
    for cue in cues:
        cue = cue.strip().lower()
        if cue and head.startswith(cue) and not head[len(cue) : len(cue) + 1].isalnum():
            return True
    return False


@dataclass(frozen=True)
class PostStepPolicy:
    """The small model writes the step; :meth:`rewrites` says whether the large model writes it
    again from the same context. ``name``: h_step, ppl_step, min_prob, cue or verify."""

    name: str
    threshold: float
    at_threshold: bool = False
    cues: tuple[str, ...] = DEFAULT_CUES
    needs_glimpse: bool = False
    signal: GlimpseSignal | None = None
    post_step: bool = True

    def __post_init__(self) -> None:
        if self.name not in POST_STEP_POLICIES:
            raise ValueError(f"unknown post-step policy {self.name!r}; expected {', '.join(POST_STEP_POLICIES)}")

    def __call__(self, glimpse: GlimpseSignals | None, rng: random.Random) -> Route:
        return SMALL  # the small model writes first

    def value(self, signals: StepSignals | None, score: float | None) -> float | None:
        """The number this policy decides on (``None`` for cue): the step's signal, or the
        verification ``score``. A missing signal is an engine's fault: it raises."""
        if self.name == "cue":
            return None
        if self.name == "verify":
            if score is None:
                raise NonFiniteSignalError("the large pool returned no verification score")
            return score
        if signals is None:
            raise NonFiniteSignalError(f"the small pool returned no step signals for {self.name}")
        return signals.value(STEP_SIGNAL_POLICIES[self.name])

    def rewrites(self, value: float | None, text: str) -> bool:
        """Whether the step goes to the large model, from :meth:`value` and the step's text."""
        if self.name == "cue":
            return opens_with_cue(text, self.cues)
        assert value is not None
        return step_rewrites(self.name, value, self.threshold, self.at_threshold)


def make_policy(
    name: str,
    threshold: float = 1.0,
    random_p: float = 0.25,
    at_threshold: bool = False,
    cues: tuple[str, ...] = DEFAULT_CUES,
) -> RoutingPolicy:
    """Build a policy by name: ``entropy``, ``top1``, ``margin`` (each on τ = ``threshold``), a
    post-step policy (``h_step``, ``ppl_step``, ``min_prob``, ``cue``, ``verify``), ``small``,
    ``large`` or ``random``."""
    if name in SIGNAL_POLICIES:
        return SignalPolicy(SIGNAL_POLICIES[name], threshold, at_threshold)
    if name in POST_STEP_POLICIES:
        return PostStepPolicy(name, threshold, at_threshold, cues)
    if name == "small":
        return FixedPolicy(SMALL)
    if name == "large":
        return FixedPolicy(LARGE)
    if name == "random":
        return RandomPolicy(random_p)
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")


# A shadow policy decides from what the step already measured, with no model work of its own:
# the glimpse's signal policies, and the post-step policies on a step the small model wrote
# (h_step, ppl_step, min_prob on its signals, cue on its text), each on its own τ.
Shadow = tuple[tuple[str, float], ...]
SHADOW_POLICIES: tuple[str, ...] = (*SIGNAL_POLICIES, *STEP_SIGNAL_POLICIES, "cue")


def check_shadow(shadow: Mapping[str, float] | Iterable[tuple[str, float]] | None) -> Shadow:
    """Shadow policies as ``(name, τ)`` pairs in name order, from a mapping name → τ (or pairs).

    Only policies whose decision needs no model work qualify: the glimpse's (``entropy``,
    ``top1``, ``margin``) and the post-step ones read off a step the small model wrote
    (``h_step``, ``ppl_step``, ``min_prob``, ``cue``, whose τ is unused). The baselines have no
    signal to compare, a shadow ``random`` would draw from the acting policy's generator, and
    ``verify`` needs a large model's forward."""
    if shadow is None:
        return ()
    pairs = list(shadow.items()) if isinstance(shadow, Mapping) else list(shadow)
    allowed = ", ".join(SHADOW_POLICIES)
    checked: dict[str, float] = {}
    for name, threshold in pairs:
        if name in ("small", "large", "random"):
            raise ValueError(f"shadow policy {name!r} reads no signal; a shadow policy is one of {allowed}")
        if name == "verify":
            raise ValueError(
                f"shadow policy 'verify' needs the large model's forward; a shadow policy is one of {allowed}"
            )
        if name not in SHADOW_POLICIES:
            raise ValueError(
                f"unknown shadow policy {name!r}; a shadow policy decides with no model work of its own: {allowed}"
            )
        if name in checked:
            raise ValueError(f"shadow policy {name!r} is given twice")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise ValueError(f"shadow policy {name!r} needs a finite threshold, got {threshold!r}")
        checked[name] = float(threshold)
    return tuple(sorted(checked.items()))


def shadow_reads_steps(shadow: Shadow) -> bool:
    """Whether a shadow policy reads the small model's step signals (the engine then computes them)."""
    return any(name in STEP_SIGNAL_POLICIES for name, _ in shadow)


def shadow_decisions(
    shadow: Shadow,
    glimpse: GlimpseSignals | None,
    at_threshold: bool = False,
    step: StepSignals | None = None,
    text: str | None = None,
    cues: tuple[str, ...] = DEFAULT_CUES,
) -> dict[str, Route]:
    """What each shadow policy would have decided on this step (``at_threshold``: the preset's
    rule, as for the acting policy). A glimpse policy reads ``glimpse``; a post-step one reads
    ``step`` (the signals of a step the small model wrote) or, for cue, ``text`` (that step's
    text): large means it would have had the large model rewrite it. A shadow never fails a
    step: where its signal is missing or not finite, it has no decision."""
    decisions: dict[str, Route] = {}
    for name, threshold in shadow:
        if name == "cue":
            if text is not None:
                decisions[name] = LARGE if opens_with_cue(text, cues) else SMALL
            continue
        if name in STEP_SIGNAL_POLICIES:
            value = step.value(STEP_SIGNAL_POLICIES[name]) if step is not None else math.nan
            if math.isfinite(value):
                decisions[name] = LARGE if step_rewrites(name, value, threshold, at_threshold) else SMALL
            continue
        if glimpse is None:
            continue
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

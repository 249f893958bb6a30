"""Online τ: hold a target share of large steps, and shed steps to the small pool under overload.

Two controls, both pure and driven by what the router observes (no clock of their own):

- **Target share** (``target_large_fraction``): τ is the quantile of the last ``window`` glimpse
  entropies that sends that share of steps large — ``glimp-ray calibrate``, run online, so the
  share holds when the traffic's difficulty drifts.
- **Overload** (``overload``): when the large pool is saturated — its calls take longer than
  ``max_token_s`` per generated token (waiting at the handle or in the engine, or slowed by a
  batch grown too large: a batching engine admits calls long before it queues them) — τ
  rises by ``raise_step`` per observation window (within ``[tau_min, tau_max]``), so more steps
  stay on the small pool and latency holds, trading accuracy within the bound ``tau_max`` sets;
  once it falls below half the bound, τ falls back by ``fall_step`` per window.

The τ a step used goes into its record and span; the router exports the current τ as a gauge.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from glimp_ray.eval.metrics import percentile

QUIET_WINDOWS = 4  # steps (in windows of large calls) after which a raised τ is judged on what came


@dataclass(frozen=True)
class OverloadControl:
    """How τ sheds load from a saturated large pool."""

    max_token_s: float  # a large call's median seconds per generated token (wall clock) that means saturated
    tau_max: float  # the highest τ it may reach: the accuracy bound
    raise_step: float = 0.1  # τ added per window while saturated
    fall_step: float = 0.05  # τ removed per window once it is below half the bound
    window: int = 16  # large calls per decision

    def __post_init__(self) -> None:
        if not (self.max_token_s > 0 and self.raise_step > 0 and self.fall_step > 0 and self.window >= 1):
            raise ValueError(f"overload control needs positive max_token_s, steps and window: {self}")
        if not math.isfinite(self.tau_max):
            raise ValueError(f"tau_max must be finite, got {self.tau_max}")


@dataclass(frozen=True)
class TauControl:
    """What the router adapts τ by (either, both or neither)."""

    target_large_fraction: float | None = None
    window: int = 512  # glimpse entropies the quantile is taken over
    min_samples: int = 32  # below this many, the configured τ stands
    tau_min: float = 0.0
    overload: OverloadControl | None = None

    def __post_init__(self) -> None:
        if self.target_large_fraction is not None and not 0 <= self.target_large_fraction <= 1:
            raise ValueError(f"target_large_fraction must be in [0, 1], got {self.target_large_fraction}")
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise ValueError(f"need 1 <= min_samples <= window, got {self.min_samples}, {self.window}")
        if self.overload is not None and self.overload.tau_max < self.tau_min:
            raise ValueError(f"tau_max {self.overload.tau_max} is below tau_min {self.tau_min}")

    @property
    def active(self) -> bool:
        return self.target_large_fraction is not None or self.overload is not None


class TauController:
    """The router's current τ: the configured one, adapted by a :class:`TauControl`."""

    def __init__(self, threshold: float, control: TauControl | None = None):
        self.control = control or TauControl()
        self.entropies: deque[float] = deque(maxlen=self.control.window)
        self.waits: list[float] = []
        self.shed = 0.0  # τ added by the overload control
        self.steps_since_decision = 0
        self.base = threshold  # τ before shedding (the configured or the target-share one)

    @property
    def tau(self) -> float:
        """The τ the next step routes on."""
        tau = self.base + self.shed
        overload = self.control.overload
        if overload is not None:
            tau = min(tau, max(overload.tau_max, self.base))
        return max(tau, self.control.tau_min) if self.control.active else tau

    def observe_entropy(self, entropy: float) -> None:
        """A glimpse entropy the small model measured (whatever τ did with it): one step."""
        self.entropies.append(entropy)
        target = self.control.target_large_fraction
        if target is not None and len(self.entropies) >= self.control.min_samples:
            self.base = percentile(list(self.entropies), 100 * (1 - target))
        overload = self.control.overload
        if overload is not None and self.shed > 0:
            # With τ raised, few steps go large and a window of large calls may never fill: after
            # QUIET_WINDOWS windows' worth of steps, the large calls seen so far decide (none: quiet).
            self.steps_since_decision += 1
            if self.steps_since_decision >= QUIET_WINDOWS * overload.window:
                self._decide(overload)

    def observe_large_call(self, seconds_per_token: float) -> None:
        """A large call's wall clock per generated token (waits included)."""
        overload = self.control.overload
        if overload is None:
            return
        self.waits.append(seconds_per_token)
        if len(self.waits) >= overload.window:
            self._decide(overload)

    def _decide(self, overload: OverloadControl) -> None:
        median = percentile(self.waits, 50) if self.waits else 0.0
        self.waits.clear()
        self.steps_since_decision = 0
        if median > overload.max_token_s:
            self.shed = min(self.shed + overload.raise_step, max(overload.tau_max - self.base, 0.0))
        elif median < overload.max_token_s / 2:
            self.shed = max(self.shed - overload.fall_step, 0.0)

    def reset(self, threshold: float) -> None:
        """A new configured τ (the router's user_config changed): adaptation starts over from it."""
        self.base = threshold
        self.shed = 0.0
        self.steps_since_decision = 0
        self.entropies.clear()
        self.waits.clear()

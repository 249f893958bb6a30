"""When requests arrive: Poisson at a rate, steps of load, a diurnal curve, or a trace's times.

Every kind yields arrival times in ``[0, duration_s)`` from a seeded :class:`random.Random`; the
rate-based ones are (non-homogeneous) Poisson processes, drawn by thinning for the diurnal curve.
A bare number is read as :class:`Poisson` at that rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from glimp_ray.traces import TracedRequest


@dataclass(frozen=True)
class Poisson:
    """Arrivals at random at ``rate`` requests per second."""

    rate: float

    def __post_init__(self) -> None:
        if not self.rate > 0 or math.isinf(self.rate):
            raise ValueError(f"arrival rate must be a finite number > 0, got {self.rate}")

    def times(self, duration_s: float, rng: random.Random) -> Iterator[float]:
        t = rng.expovariate(self.rate)
        while t < duration_s:
            yield t
            t += rng.expovariate(self.rate)


@dataclass(frozen=True)
class LoadSteps:
    """Poisson arrivals whose rate steps: ``steps`` is ``[(start_s, rate), ...]``, the first at 0."""

    steps: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple((float(s), float(r)) for s, r in self.steps))
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError("load steps need a first step starting at 0 s")
        starts = [s for s, _ in self.steps]
        if starts != sorted(set(starts)):
            raise ValueError(f"load step starts must increase strictly, got {starts}")
        if any(r < 0 or math.isinf(r) for _, r in self.steps):
            raise ValueError("load step rates must be finite and >= 0")

    def times(self, duration_s: float, rng: random.Random) -> Iterator[float]:
        ends = [s for s, _ in self.steps[1:]] + [duration_s]
        for (start, rate), end in zip(self.steps, ends, strict=True):
            end = min(end, duration_s)
            if rate <= 0 or start >= end:
                continue
            t = start + rng.expovariate(rate)
            while t < end:
                yield t
                t += rng.expovariate(rate)


@dataclass(frozen=True)
class Diurnal:
    """Poisson arrivals at ``mean_rate × (1 + amplitude × cos(2π (t − peak_s) / period_s))``."""

    mean_rate: float
    amplitude: float = 0.5
    period_s: float = 86400.0
    peak_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.mean_rate > 0 or not 0 <= self.amplitude <= 1 or not self.period_s > 0:
            raise ValueError("diurnal arrivals need mean_rate > 0, 0 <= amplitude <= 1 and period_s > 0")

    def rate(self, t: float) -> float:
        return self.mean_rate * (1 + self.amplitude * math.cos(2 * math.pi * (t - self.peak_s) / self.period_s))

    def times(self, duration_s: float, rng: random.Random) -> Iterator[float]:
        peak = self.mean_rate * (1 + self.amplitude)
        t = rng.expovariate(peak)
        while t < duration_s:
            if rng.random() * peak <= self.rate(t):  # thinning
                yield t
            t += rng.expovariate(peak)


@dataclass(frozen=True)
class TraceTimes:
    """Arrivals at recorded times (seconds, shifted so the first is at 0)."""

    times_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times_s:
            raise ValueError("trace arrivals need at least one time")
        first = min(self.times_s)
        object.__setattr__(self, "times_s", tuple(sorted(float(t) - first for t in self.times_s)))

    @classmethod
    def of(cls, requests: Sequence[TracedRequest]) -> TraceTimes:
        """The start times of traced requests."""
        starts = [r.start_s for r in requests if r.start_s is not None]
        if not starts:
            raise ValueError("the traced requests carry no start times")
        return cls(tuple(starts))

    def times(self, duration_s: float, rng: random.Random) -> Iterator[float]:
        return (t for t in self.times_s if t < duration_s)


Arrivals = float | Poisson | LoadSteps | Diurnal | TraceTimes


def as_arrivals(arrivals: Arrivals) -> Poisson | LoadSteps | Diurnal | TraceTimes:
    if isinstance(arrivals, Poisson | LoadSteps | Diurnal | TraceTimes):
        return arrivals
    if isinstance(arrivals, int | float) and not isinstance(arrivals, bool):
        return Poisson(float(arrivals))
    raise ValueError(f"arrivals must be a rate or Poisson/LoadSteps/Diurnal/TraceTimes, got {arrivals!r}")

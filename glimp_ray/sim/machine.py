"""Pools that share one machine: contention between pools and the machine's drifting speed.

By default a replica's speed depends on its own batch only, as on GPUs where each replica has
its own device. On one shared CPU (the demo on this 2-core machine: the router and a replica of
each pool on the same cores) two more things hold, and a simulation can be given them:

- :class:`Contention`: a pool's calls write each token ``busy_s[pool][other]`` seconds slower
  while ``other`` runs at least one call (its forwards take cores from this pool's);
- :class:`SpeedNoise`: the machine's speed drifts (other processes, caches, the router's own
  bursts): every call's model seconds are multiplied by ``exp(X(t) + ε)``, where ``X`` is an
  Ornstein–Uhlenbeck process in log time (standard deviation ``sd``, correlation time
  ``correlation_s``) shared by every replica on the machine, and ``ε`` is the call's own
  (standard deviation ``call_sd``). Both are centred so that the factor's mean is 1: a curve
  fitted to the mean seconds per token keeps its mean, and gains the tail that slow stretches
  of the machine give requests.

:mod:`glimp_ray.sim.calibrate` measures both from traces of the deployment as it ran.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import simpy


@dataclass(frozen=True)
class Contention:
    """``busy_s[pool][other]``: seconds per token added to ``pool``'s calls while ``other`` is busy."""

    busy_s: Mapping[str, Mapping[str, float]]

    def __post_init__(self) -> None:
        for pool, others in self.busy_s.items():
            for other, seconds in others.items():
                if other == pool:
                    raise ValueError(f"contention of pool {pool!r} with itself is its batching curve")
                if not seconds >= 0 or math.isinf(seconds):
                    raise ValueError(f"contention seconds must be finite and >= 0, got {pool}/{other}: {seconds}")


@dataclass(frozen=True)
class SpeedNoise:
    """The machine's speed as a random process (see the module docstring).

    ``shared``: one ``X`` for all replicas (one machine); ``False``: one per replica (each on
    its own machine). ``step_s``: how often ``X`` moves (default: a quarter of its correlation
    time, at least 0.05 s).
    """

    sd: float
    correlation_s: float
    call_sd: float = 0.0
    shared: bool = True
    step_s: float | None = None

    def __post_init__(self) -> None:
        if not (self.sd >= 0 and self.call_sd >= 0 and self.correlation_s > 0):
            raise ValueError(f"speed noise needs sd >= 0, call_sd >= 0 and correlation_s > 0, got {self}")
        if self.step_s is not None and not self.step_s > 0:
            raise ValueError(f"speed noise step_s must be > 0, got {self.step_s}")

    @property
    def step(self) -> float:
        return self.step_s if self.step_s is not None else max(self.correlation_s / 4, 0.05)


class Speed:
    """The running ``X`` processes of a :class:`SpeedNoise` (one, or one per replica), and each
    call's own factor; calls ``on_change`` after every move of ``X``."""

    def __init__(self, env: simpy.Environment, noise: SpeedNoise, seed: int, on_change: Callable[[], None]) -> None:
        self.env = env
        self.noise = noise
        self.rng = random.Random(f"speed-{seed}")  # its own stream: arrivals draw as without noise
        self.on_change = on_change
        self._x: dict[object, float] = {}
        self._keep = math.exp(-noise.step / noise.correlation_s)
        self._shock = noise.sd * math.sqrt(1 - self._keep**2)
        env.process(self._run())

    def factor(self, replica: object) -> float:
        """``exp(X − sd²/2)`` for ``replica`` (the shared ``X`` unless each replica has its own)."""
        key = None if self.noise.shared else replica
        x = self._x.get(key)
        if x is None:
            x = self._x[key] = self.rng.gauss(0.0, self.noise.sd)  # drawn from the stationary law
        return math.exp(x - self.noise.sd**2 / 2)

    def call_factor(self) -> float:
        """One call's own ``exp(ε − call_sd²/2)``."""
        sd = self.noise.call_sd
        return math.exp(self.rng.gauss(0.0, sd) - sd**2 / 2) if sd else 1.0

    def _run(self) -> simpy.events.ProcessGenerator:
        while True:
            yield self.env.timeout(self.noise.step)
            for key, x in self._x.items():
                self._x[key] = x * self._keep + self._shock * self.rng.gauss(0.0, 1.0)
            self.on_change()

"""One replica of a pool: a batch in which every running call advances together.

With ``b`` calls in the batch, each decoding call writes one token every ``ℓ(b)`` seconds (the
profile's :meth:`~glimp_ray.profile.EngineProfile.latency`; on a shared machine also slowed by
the other pools' work and the machine's speed, :mod:`glimp_ray.sim.machine`, through
:meth:`Pool.token_time`): processor sharing with a rate that depends on ``b``. With
``joins_at_forward`` a call first waits for the forward in progress to end (a uniform share of
``ℓ(b)``). A call then spends a fixed time in the batch (prefill of its unseen tokens and, if it
has one, its glimpse), counted in ``b`` but not decoding. Tokens are not events: the replica
keeps a virtual clock ``V`` (tokens each decoding call has written since the replica started)
and each call finishes at ``V = V_start + tokens``; only a change of ``b`` or the next finish is
a SimPy event, and the finish time is recomputed whenever ``b`` (or the machine's speed)
changes. A call's own speed factor scales its fixed time and its tokens of work.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING

import simpy

if TYPE_CHECKING:
    from glimp_ray.sim.pool import Pool

_EPS = 1e-9


class Replica:
    """A batch of at most ``max_concurrency`` calls; the counters feed the autoscaler's reports."""

    def __init__(self, env: simpy.Environment, pool: Pool, index: int) -> None:
        self.env = env
        self.pool = pool
        self.index = index
        self.profile = pool.spec.profile
        self.max_concurrency = pool.max_concurrency
        self._joins = pool.spec.joins_at_forward
        self.state = "starting"  # starting | running | draining | stopped
        self.ongoing = 0  # calls given to this replica and not finished (batch + fixed phase)
        self.queue: deque[simpy.Event] = deque()  # calls waiting for this replica (session affinity)
        self._batch = 0  # calls in the batch: fixed phase + decoding
        self._finishes: list[tuple[float, int, simpy.Event]] = []  # (V at finish, seq, event)
        self._v = 0.0
        self._last = env.now
        self._generation = 0
        self._seq = itertools.count()
        self._latency = pool.token_time(1, self)

    @property
    def free(self) -> bool:
        return self.state == "running" and self.ongoing < self.max_concurrency

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0 and self._batch:
            decoding = len(self._finishes)
            stats = self.pool.stats
            stats.busy_s += dt
            stats.batch_area += self._batch * dt
            if decoding:
                self._v += dt / self._latency
                stats.decode_area += decoding * dt
                stats.tokens += decoding * dt / self._latency
        self._last = now

    def _resize(self, delta: int) -> None:
        self._advance()
        self._batch += delta
        self._latency = (  # ℓ(b) alone, the common case, inline: the simulator's hot path
            self.profile.latency(max(self._batch, 1)) if self.pool.plain else self.pool.token_time(self._batch, self)
        )
        self._reschedule()
        if self.pool.dependents:
            self.pool.batch_changed(delta)

    def refresh(self) -> None:
        """The per-token time changed from outside (another pool, the machine's speed)."""
        self._advance()
        self._latency = (  # ℓ(b) alone, the common case, inline: the simulator's hot path
            self.profile.latency(max(self._batch, 1)) if self.pool.plain else self.pool.token_time(self._batch, self)
        )
        self._reschedule()

    def _reschedule(self) -> None:
        self._generation += 1
        if not self._finishes:
            return
        wait = max((self._finishes[0][0] - self._v) * self._latency, 0.0)
        generation = self._generation
        self.env.timeout(wait).callbacks.append(lambda _: self._tick(generation))

    def _tick(self, generation: int) -> None:
        if generation != self._generation:
            return  # b changed since: a newer finish time was scheduled
        self._advance()
        done = 0
        now = self.env.now
        # Done when its remaining time no longer moves the clock (float resolution at ``now``).
        while self._finishes and now + (self._finishes[0][0] - self._v) * self._latency <= now + _EPS * self._latency:
            _, _, event = heapq.heappop(self._finishes)
            event.succeed()
            done += 1
        self._batch -= done
        self._latency = (  # ℓ(b) alone, the common case, inline: the simulator's hot path
            self.profile.latency(max(self._batch, 1)) if self.pool.plain else self.pool.token_time(self._batch, self)
        )
        self._reschedule()
        if done and self.pool.dependents:
            self.pool.batch_changed(-done)

    def run(self, fixed_s: float, tokens: int, scale: float = 1.0) -> simpy.events.ProcessGenerator:
        """Run one call on this replica (its slot already taken); returns when it finished.
        ``scale``: the call's own speed factor (1: none)."""
        if self._joins and self._batch:
            yield self.env.timeout(self.pool.join_rng.random() * self._latency)
        self._resize(+1)
        if fixed_s > 0:
            if not self.pool.plain:
                fixed_s *= scale * self.pool.speed_factor(self)
            yield self.env.timeout(fixed_s)
        if tokens > 0:
            self._advance()
            finished = self.env.event()
            heapq.heappush(self._finishes, (self._v + tokens * scale, next(self._seq), finished))
            self._reschedule()
            yield finished
        else:
            self._resize(-1)

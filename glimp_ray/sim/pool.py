"""A pool: replicas of one profile, a queue, start-up and drain, and what its replicas report.

A call takes a slot on the running replica with the fewest calls (Serve's power-of-two-choices
router, idealised); when every replica is at ``max_concurrency`` it waits in the pool's FIFO
queue, as calls wait in a Serve handle. With ``session_affinity`` a request's calls go to the
replica its session hashes to (Serve's consistent-hash router) and wait in that replica's queue.
A new replica takes ``startup_s`` before it serves (GPU time is paid from its start); a removed
one takes no new calls, finishes the ones it runs, and then stops.

On a shared machine (:mod:`glimp_ray.sim.machine`) a pool's per-token time also counts the pools
that slow it while they are busy (``slowed_by``) and the machine's speed (``speed``); the
simulation wires both.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import simpy

from glimp_ray.sim.replica import Replica

if TYPE_CHECKING:
    from glimp_ray.sim.config import PoolSpec
    from glimp_ray.sim.machine import Speed
    from glimp_ray.sim.workload import SimCall


@dataclass
class PoolStats:
    """Cumulative counters over all the pool's replicas (the autoscaler reads differences)."""

    busy_s: float = 0.0  # replica-seconds with at least one call in the batch
    batch_area: float = 0.0  # ∫ calls in the batch dt
    decode_area: float = 0.0  # ∫ decoding calls dt
    tokens: float = 0.0  # tokens decoded
    calls: int = 0  # calls finished


class Pool:
    def __init__(self, env: simpy.Environment, name: str, spec: PoolSpec) -> None:
        self.env = env
        self.name = name
        self.spec = spec
        self.max_concurrency = spec.max_concurrency or spec.profile.max_concurrency
        self.stats = PoolStats()
        self.replicas: list[Replica] = []  # not stopped
        self.queue: deque[simpy.Event] = deque()
        self.waiting = 0
        self.gpu_replica_s = 0.0  # replica-seconds held (starting, running or draining)
        self._held_since = env.now
        self.timeline: list[tuple[float, int]] = []
        self._count = 0
        self.busy_calls = 0  # calls in its replicas' batches (counted when another pool depends on it)
        self.plain = True  # ℓ(b) alone: no contention, no speed noise (the simulation wires them)
        self.slowed_by: list[tuple[Pool, float]] = []  # (pool, seconds per token while it is busy)
        self.dependents: list[Pool] = []  # pools this one slows while busy
        self.speed: Speed | None = None
        self.join_rng = random.Random(f"join-{name}")  # joins_at_forward's waits (the run reseeds it)
        self.scale_to(spec.replicas, initial=True)

    # Speed ------------------------------------------------------------------------------------

    def token_time(self, batch: int, replica: Replica) -> float:
        """Seconds per token each decoding call of ``replica`` sees with ``batch`` calls in it."""
        seconds = self.spec.profile.latency(max(batch, 1))
        for other, busy_s in self.slowed_by:
            if other.busy_calls:
                seconds += busy_s
        return seconds * self.speed.factor(replica) if self.speed is not None else seconds

    def speed_factor(self, replica: Replica) -> float:
        return self.speed.factor(replica) if self.speed is not None else 1.0

    def batch_changed(self, delta: int) -> None:
        before = self.busy_calls
        self.busy_calls += delta
        if self.dependents and (before == 0) != (self.busy_calls == 0):
            for pool in self.dependents:
                pool.refresh()

    def refresh(self) -> None:
        """Recompute every replica's per-token time (another pool or the machine changed)."""
        for replica in self.replicas:
            replica.refresh()

    # Replica accounting ---------------------------------------------------------------------

    @property
    def target(self) -> int:
        """Replicas wanted now: running and starting (Serve's target count)."""
        return sum(r.state in ("starting", "running") for r in self.replicas)

    @property
    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "running"]

    def _account(self) -> None:
        now = self.env.now
        self.gpu_replica_s += len(self.replicas) * (now - self._held_since)
        self._held_since = now

    def _record(self) -> None:
        self.timeline.append((self.env.now, len(self.replicas)))

    def scale_to(self, count: int, initial: bool = False) -> None:
        self._account()
        while self.target < count:
            replica = Replica(self.env, self, self._count)
            self._count += 1
            self.replicas.append(replica)
            if initial or self.spec.startup_s <= 0:
                self._start(replica)
            else:
                self.env.timeout(self.spec.startup_s).callbacks.append(self._starter(replica))
        while self.target > count:
            live = [r for r in self.replicas if r.state in ("starting", "running")]
            victim = min(live, key=lambda r: (r.state == "running", r.ongoing))
            self._drain(victim)
        self._record()

    def _starter(self, replica: Replica) -> Callable[[simpy.Event], None]:
        return lambda _: self._start(replica)

    def _start(self, replica: Replica) -> None:
        if replica.state != "starting":
            return
        replica.state = "running"
        self._dispatch()

    def _drain(self, replica: Replica) -> None:
        replica.state = "draining"
        while replica.queue:  # its waiting calls go back to the pool
            self.queue.append(replica.queue.popleft())
        if replica.ongoing == 0:
            self._stop(replica)
        self._dispatch()

    def _stop(self, replica: Replica) -> None:
        self._account()
        replica.state = "stopped"
        self.replicas.remove(replica)
        self._record()

    # Calls ------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give waiting calls the free slots (pool queue first, then each replica's own)."""
        for replica in self.running:
            while replica.queue and replica.free:
                self._grant(replica, replica.queue.popleft())
        while self.queue:
            free = [r for r in self.running if r.free]
            if not free:
                return
            self._grant(min(free, key=lambda r: r.ongoing), self.queue.popleft())

    def _grant(self, replica: Replica, ticket: simpy.Event) -> None:
        replica.ongoing += 1
        self.waiting -= 1
        ticket.succeed(replica)

    def _release(self, replica: Replica) -> None:
        replica.ongoing -= 1
        self.stats.calls += 1
        if replica.state == "draining" and replica.ongoing == 0:
            self._stop(replica)
        self._dispatch()

    def call(self, call: SimCall, session: int) -> simpy.events.ProcessGenerator:
        """Run ``call`` for request ``session``: wait for a slot, then run it on that replica."""
        ticket = self.env.event()
        self.waiting += 1
        running = self.running
        if self.spec.session_affinity and running:
            home = running[session % len(running)]
            home.queue.append(ticket)
        else:
            self.queue.append(ticket)
        self._dispatch()
        replica = yield ticket
        profile = self.spec.profile
        fixed = call.prefill_tokens * profile.prefill_s_per_token + (profile.glimpse_s if call.glimpse else 0.0)
        scale = 1.0 if self.speed is None else self.speed.call_factor()
        yield from replica.run(fixed, call.tokens, scale)
        self._release(replica)

    @property
    def in_flight(self) -> int:
        return self.waiting + sum(r.ongoing for r in self.replicas)

    def close(self) -> None:
        self._account()
        self._record()

"""The bridge between asyncio callers and an engine's step loop on its own thread.

Callers submit :class:`~glimp_ray.engine.sequence.Sequence` s and await a future; the worker
thread hands new requests and releases to the engine between turns and runs
:meth:`StepLoopEngine.run_once` while there is work. A cancelled caller only marks its request
aborted: the loop stops it at its next turn, never in the middle of a forward.

A run of easy steps (streaming glimpse, :meth:`StepLoopEngine.run_steps`) stays inside the step
loop: when one of its steps finishes and the run goes on, the next step's request is queued first
in line on the worker thread itself, with no round trip to the caller; each finished step is still
streamed back as it completes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

from glimp_ray.engine.base import EngineError
from glimp_ray.engine.sequence import DoneCallback, Sequence
from glimp_ray.step_run import RunCursor, StepRun
from glimp_ray.types import StepRequest, StepResult

logger = logging.getLogger(__name__)

# Worker threads are stopped before interpreter shutdown tears down torch underneath them.
_LIVE_ENGINES: weakref.WeakSet[StepLoopEngine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close()


def _finished(outcome: StepResult | BaseException) -> None:
    """The ``done`` of a request or run whose caller has its answer or went away: a no-op."""


@dataclass(eq=False)
class ChainedRun:
    """A run of easy steps inside the step loop: its cursor, its step in flight, whether its
    caller went away (guarded by the engine's lock) and whether its session was released (a
    release ends the run after its current step: the caller is done with the session)."""

    cursor: RunCursor
    done: DoneCallback
    current: Sequence | None = None
    closed: bool = False
    released: bool = False  # its session was released meanwhile (on the worker thread)


class StepLoopEngine:
    """A :class:`~glimp_ray.engine.base.StepClient` whose work runs on one worker thread.

    Subclasses implement the step loop: :meth:`check` (refuse a request before it is queued),
    :meth:`accept` (take new requests and releases), :attr:`has_work`, :meth:`run_once` (one
    turn), :meth:`recover` (after a turn raised) and :meth:`abandon` (requests left at close).
    """

    name = "engine"

    def __init__(self) -> None:
        self.busy_s = 0.0  # seconds the step loop had work, for the service rate
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._outstanding: set[Sequence] = set()  # submitted, not yet answered (``queued``)
        self._releases: set[str] = set()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- what a step loop implements ------------------------------------------------

    def check(self, request: StepRequest) -> None:
        """Raise for a request that must not be queued at all."""

    def accept(self, inbox: list[Sequence], releases: set[str]) -> None:
        raise NotImplementedError

    def resume(self, seq: Sequence) -> None:
        """Queue the next step of a run, first in line (on the worker thread)."""
        raise NotImplementedError

    @property
    def has_work(self) -> bool:
        raise NotImplementedError

    def run_once(self) -> None:
        raise NotImplementedError

    def recover(self) -> None:
        """After :meth:`run_once` raised: fail what it was running, keep serving."""

    def abandon(self) -> list[Sequence]:
        """The requests still queued or running when the engine closes."""
        return []

    # -- the async front ------------------------------------------------------------

    async def step(self, request: StepRequest) -> StepResult:
        self.check(request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StepResult] = loop.create_future()

        def done(outcome: StepResult | BaseException) -> None:
            with self._cv:
                self._outstanding.discard(seq)
            # The caller's loop may be gone (e.g. asyncio.run timed out): nobody to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, outcome)

        seq = Sequence(request, done)
        self._submit(seq)
        try:
            return await future
        except asyncio.CancelledError:
            seq.aborted = True  # the step loop stops it at the next token
            with self._cv:
                self._outstanding.discard(seq)
            raise
        finally:
            seq.on_done = _finished  # ``done`` holds ``seq``: no cycle left to wait for the collector

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        """A run of easy steps served inside the step loop; each step is yielded as it completes.
        Closing the iterator early stops the step in flight at its next turn."""
        cursor = RunCursor(request, run)
        first = cursor.first()
        if first is None:
            return
        self.check(first)
        loop = asyncio.get_running_loop()
        outcomes: asyncio.Queue[tuple[StepResult | BaseException, bool]] = asyncio.Queue()

        def done(outcome: StepResult | BaseException) -> None:  # on the worker thread
            with self._cv:
                self._outstanding.discard(chained.current)  # type: ignore[arg-type]
            last = not isinstance(outcome, StepResult) or cursor.ended
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(outcomes.put_nowait, (outcome, last))

        chained = ChainedRun(cursor, done)
        chained.current = Sequence(first, done, run=chained)
        self._submit(chained.current)
        try:
            while True:
                outcome, last = await outcomes.get()
                if isinstance(outcome, BaseException):
                    raise outcome
                yield outcome
                if last:
                    return
        finally:
            with self._cv:
                chained.closed = True
                if chained.current is not None:
                    chained.current.aborted = True  # finished already, or stopped at its next turn
                    self._outstanding.discard(chained.current)
                # The run and its steps point at each other (a step's ``run``, the run's
                # ``current`` and ``done``): unlinked here, they go with their last reference
                # instead of waiting, with the session's KV cache, for a full garbage collection
                # (rare in a process holding torch's millions of objects: a replica's memory grew
                # ~0.5 MB/s under a soak until it did).
                chained.current = None
                chained.done = _finished

    def _done(self, seq: Sequence, outcome: StepResult | BaseException) -> None:
        """Answer a finished request (on the worker thread); a run that goes on queues its next step."""
        chained: ChainedRun | None = seq.run
        following = None
        if chained is not None and isinstance(outcome, StepResult):
            if chained.released:
                chained.cursor.ended = True  # its session was released: the run ends with this step
            elif not chained.closed:
                following = chained.cursor.advance(outcome)
        seq.on_done(outcome)
        if chained is None or following is None:
            return
        nxt = Sequence(following, chained.done, run=chained)
        with self._cv:
            if chained.closed:
                return
            chained.current = nxt
            self._outstanding.add(nxt)
        try:
            self.check(following)
        except Exception as exc:
            chained.cursor.ended = True
            nxt.on_done(exc)
            return
        self.resume(nxt)

    async def release(self, session_id: str) -> None:
        with self._cv:
            self._releases.add(session_id)
            self._cv.notify()

    @property
    def queued(self) -> int:
        """Requests submitted and not yet answered (waiting or running)."""
        with self._cv:
            return len(self._outstanding)

    @property
    def alive(self) -> bool:
        """False once the worker thread died (it is started by the first request)."""
        return self._thread is None or self._thread.is_alive()

    def close(self) -> None:
        """Stop the worker thread; requests still queued are failed."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _submit(self, seq: Sequence) -> None:
        with self._cv:
            if self._closed:
                raise EngineError("engine is closed")
            self._inbox.append(seq)
            self._outstanding.add(seq)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=f"engine-{self.name}", daemon=True)
                self._thread.start()
                _LIVE_ENGINES.add(self)
            self._cv.notify()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._inbox or self._releases or self.has_work):
                    self._cv.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
                releases, self._releases = self._releases, set()
            self.accept(inbox, releases)
            start = time.perf_counter()
            try:
                self.run_once()
            except Exception:  # a bug must fail requests, not silently stop the worker
                logger.exception("engine step loop failed; failing its running requests")
                self.recover()
            self.busy_s += time.perf_counter() - start
        for seq in [*self._inbox, *self.abandon()]:
            seq.on_done(EngineError("engine closed"))


def _resolve(future: asyncio.Future[StepResult], outcome: StepResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

"""The bridge between asyncio callers and an engine's step loop on its own thread.

Callers submit :class:`~glimp_ray.engine.sequence.Sequence` s and await a future; the worker
thread hands new requests and releases to the engine between turns and runs
:meth:`StepLoopEngine.run_once` while there is work. A cancelled caller only marks its request
aborted: the loop stops it at its next turn, never in the middle of a forward.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
import weakref

from glimp_ray.engine.base import EngineError
from glimp_ray.engine.sequence import Sequence
from glimp_ray.types import StepRequest, StepResult

logger = logging.getLogger(__name__)

# Worker threads are stopped before interpreter shutdown tears down torch underneath them.
_LIVE_ENGINES: weakref.WeakSet[StepLoopEngine] = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close()


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

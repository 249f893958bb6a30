"""The meters behind the autoscaler and the routing-ratio metrics.

:class:`ServiceMeter` runs in each model server (tokens per busy second, and its batching point:
mean concurrency and seconds per token); :class:`DemandMeter` in each router (request rate and
the routing ratio). Both read cumulative counters over a sliding window and are pure.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from glimp_ray.autoscaling import RouterLoad


class ServiceMeter:
    """A replica's service over a sliding window of busy time, from cumulative counters.

    ``rate``: tokens generated per busy second (busy seconds exclude idle time, so the rate is
    what a replica did while working, not what it was asked to do). ``batching``: the mean
    number of requests it ran while busy (request-seconds in the model per busy second) and the
    seconds per token they saw (request-seconds per token) — one point of the batching curve.
    """

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        # (time, engine's generated tokens, busy s, finished steps' model s, their tokens)
        self.samples: deque[tuple[float, int, float, float, int]] = deque()

    def add(
        self, now: float, generated_tokens: int, busy_s: float, request_s: float = 0.0, request_tokens: int = 0
    ) -> None:
        self.samples.append((now, generated_tokens, busy_s, request_s, request_tokens))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Tokens/s while busy, or None when the window saw too little work to tell."""
        if len(self.samples) < 2:
            return None
        (_, tokens0, busy0, _, _), (_, tokens1, busy1, _, _) = self.samples[0], self.samples[-1]
        busy = busy1 - busy0
        return (tokens1 - tokens0) / busy if busy > 1e-3 and tokens1 > tokens0 else None

    def batching(self) -> tuple[float, float] | None:
        """(mean concurrency while busy, seconds per token), or None without finished steps."""
        if len(self.samples) < 2:
            return None
        (_, _, busy0, seconds0, tokens0), (_, _, busy1, seconds1, tokens1) = self.samples[0], self.samples[-1]
        busy, seconds, tokens = busy1 - busy0, seconds1 - seconds0, tokens1 - tokens0
        if busy <= 1e-3 or seconds <= 0 or tokens <= 0:
            return None
        return max(seconds / busy, 1.0), seconds / tokens


class DemandMeter:
    """A router's request rate and routing ratio over a sliding window of ``window_s``.

    The one meter of the routing ratio: the autoscaling stats and the router's ratio gauge both
    read it. Running totals make :meth:`load` cheap enough to call on every event. A step that
    fell back to the small pool counts for the small pool (it is the small pool's load).
    """

    def __init__(self, window_s: float = 30.0, start: float = 0.0):
        self.window_s = window_s
        self.start = start
        self.arrivals: deque[float] = deque()
        self.steps: deque[tuple[float, str, int, bool]] = deque()  # (time, pool, tokens, thinking step)
        self.requests: deque[tuple[float, int]] = deque()  # (time, generated tokens)
        self._tokens: dict[str, int] = {}
        self._thinking_steps: dict[str, int] = {}
        self._request_tokens = 0
        self.last_tokens_per_request = 0.0
        self.last_token_share: dict[str, float] = {}
        self.last_step_share: dict[str, float] = {}

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)

    def generated(self, now: float, pool: str, tokens: int, thinking: bool = True) -> None:
        """A thinking step (or, with ``thinking=False``, an answer) written by ``pool``."""
        self.steps.append((now, pool, tokens, thinking))
        self._tokens[pool] = self._tokens.get(pool, 0) + tokens
        if thinking:
            self._thinking_steps[pool] = self._thinking_steps.get(pool, 0) + 1

    def finished(self, now: float, tokens: int) -> None:
        """A request finished having generated ``tokens`` in all (steps and answer)."""
        self.requests.append((now, tokens))
        self._request_tokens += tokens

    def observe(self, now: float, record: StepRecordLike, finished_tokens: int | None = None) -> None:
        """A step's or an answer's record (``index`` -1); ``finished_tokens`` ends a request."""
        self.generated(now, served_by(record), record.tokens, thinking=record.index >= 0)
        if finished_tokens is not None:
            self.finished(now, finished_tokens)

    def load(self, now: float) -> RouterLoad:
        """What this router saw; with no traffic in the window, the last ratio is kept."""
        horizon = now - self.window_s
        while self.arrivals and self.arrivals[0] < horizon:
            self.arrivals.popleft()
        while self.steps and self.steps[0][0] < horizon:
            _, pool, tokens, thinking = self.steps.popleft()
            self._tokens[pool] -= tokens
            self._thinking_steps[pool] = self._thinking_steps.get(pool, 0) - thinking
        while self.requests and self.requests[0][0] < horizon:
            self._request_tokens -= self.requests.popleft()[1]
        if self.requests:
            self.last_tokens_per_request = self._request_tokens / len(self.requests)
        if self.steps:
            self.last_token_share = _shares(self._tokens)
        if any(self._thinking_steps.values()):
            self.last_step_share = _shares(self._thinking_steps)
        return RouterLoad(
            request_rate=len(self.arrivals) / min(self.window_s, max(now - self.start, 1e-3)),
            tokens_per_request=self.last_tokens_per_request,
            token_share=dict(self.last_token_share),
            step_share=dict(self.last_step_share),
        )


class StepRecordLike(Protocol):
    """What the meter reads of a :class:`~glimp_ray.collab.StepRecord`."""

    @property
    def index(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def tokens(self) -> int: ...
    @property
    def fell_back(self) -> bool: ...


def served_by(record: StepRecordLike) -> str:
    """The pool whose replicas wrote the record (a fallback's is the small pool)."""
    return "small" if record.fell_back else record.model


def _shares(weights: dict[str, int]) -> dict[str, float]:
    total = sum(weights.values())
    return {pool: w / total for pool, w in weights.items() if w} if total else {}

"""A traced request as the simulator replays it: its pool calls at a what-if τ.

Each step keeps its traced token count and entropy; with a τ it is re-routed by
:func:`glimp_ray.policies.routes_large` (a step without an entropy keeps its traced route). As
the fused loop runs it:

- a step written by the small model is one small-pool call: the glimpse (``glimpse_s``, its first
  token) and then the step's other tokens;
- a step routed large is a glimpse on the small pool (its token dropped) and then the step on the
  large pool;
- the answer runs on its traced pool.

A call first prefills what its session has not seen: the tokens the other pool wrote since this
pool's last call (the prompt is not in the trace and is left out). With only one pool (e.g.
large-only) every call runs there and there is no glimpse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from glimp_ray.policies import routes_large
from glimp_ray.traces import TracedRequest

SMALL, LARGE = "small", "large"


@dataclass(frozen=True)
class SimCall:
    """One model call: its pool, a glimpse first or not, tokens to prefill and to decode."""

    pool: str
    tokens: int  # tokens decoded (for a fused small step, those after the glimpsed first one)
    glimpse: bool = False  # starts with a glimpse (a glimpse-only call when tokens == 0)
    prefill_tokens: int = 0


@dataclass(frozen=True)
class SimRequest:
    calls: tuple[SimCall, ...]

    def tokens(self, pool: str) -> int:
        """Tokens this request generates on ``pool`` (a glimpse counts one, on the small pool)."""
        return sum(c.tokens + c.glimpse for c in self.calls if c.pool == pool)


def replay(request: TracedRequest, pools: Sequence[str], threshold: float | None) -> SimRequest:
    """``request``'s calls on ``pools`` at τ ``threshold`` (``None``: the traced routes)."""
    if not pools:
        raise ValueError("the simulator needs at least one pool")
    only = pools[0] if len(pools) == 1 else None
    if only is None and set(pools) != {SMALL, LARGE}:
        raise ValueError(f"pools must be 'small' and 'large' (or one of them alone), got {sorted(pools)}")
    calls: list[SimCall] = []
    unseen = dict.fromkeys(pools, 0)  # tokens each pool's session has not prefilled yet

    def call(pool: str, tokens: int, glimpse: bool) -> None:
        calls.append(SimCall(pool, tokens, glimpse, unseen[pool]))
        unseen[pool] = 0
        for other in unseen:
            if other != pool:
                unseen[other] += tokens + glimpse

    for step in request.steps:
        if only is not None:
            call(only, step.tokens, False)
            continue
        route = step.route
        if threshold is not None and step.entropy is not None:
            route = LARGE if routes_large(step.entropy, threshold) else SMALL
        if route == SMALL:
            call(SMALL, max(step.tokens - 1, 0), True)
        else:
            if step.entropy is not None:  # a step that was glimpsed (a large-only trace has none)
                calls.append(SimCall(SMALL, 0, True, unseen[SMALL]))
                unseen[SMALL] = 0
            call(LARGE, step.tokens, False)
    answer_pool = only or (request.answer.route if request.answer.route in pools else LARGE)
    call(answer_pool, request.answer.tokens, False)
    return SimRequest(tuple(calls))


def replays(
    requests: Sequence[TracedRequest], pools: Mapping[str, object], threshold: float | None
) -> list[SimRequest]:
    if not requests:
        raise ValueError("the simulator needs at least one traced request")
    names = sorted(pools)
    return [replay(r, names, threshold) for r in requests]

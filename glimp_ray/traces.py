"""Traced requests read back from the JSON-lines spans of :mod:`glimp_ray.tracing`.

A step span carries its route, glimpse entropy, tokens, replica and model seconds; its end time
closes the model call that wrote it, so ``[end − model_s, end]`` is that call's time on its
replica. Overlapping calls on one replica ran in one batch: each call's ``concurrency`` is the
mean number of calls its replica ran during it (itself included), which, with its seconds per
token, is one point of the replica's batching curve (:mod:`glimp_ray.capacity`).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from glimp_ray.tracing import SHADOW_ATTRIBUTE, SPAN_ANSWER, SPAN_REQUEST, SPAN_STEP


@dataclass(frozen=True)
class TracedCall:
    """One model call as traced: a thinking step or the answer."""

    route: str
    entropy: float | None
    tokens: int
    model_s: float
    glimpse_s: float = 0.0  # the loop's wall-clock for the glimpse (reported only)
    glimpse_model_s: float = 0.0  # the glimpse's seconds in the small model
    replica: str = ""
    end_s: float | None = None  # when the call ended (the span's end), None if not recorded
    concurrency: float = 1.0  # mean calls its replica ran during it, itself included
    top1_prob: float | None = None  # the glimpse's top-1 and top-2 probabilities
    top2_prob: float | None = None
    policy: str = ""  # the acting policy that routed it
    shadow: dict[str, str] = field(default_factory=dict, hash=False)  # each shadow policy's decision
    step_entropy: float | None = None  # the small model's step signals (post-step policies)
    step_perplexity: float | None = None
    step_min_prob: float | None = None
    post_signal: float | None = None  # the value a post-step policy decided on (verify: the score)

    def signal(self, name: str) -> float | None:
        """The value of a policy's signal on this call (``None``: not measured)."""
        if name == "entropy":
            return self.entropy
        if name == "top1":
            return self.top1_prob
        if name == "margin":
            return None if self.top1_prob is None or self.top2_prob is None else self.top1_prob - self.top2_prob
        if name == "verify":
            return self.post_signal if self.policy == "verify" else None
        return {"h_step": self.step_entropy, "ppl_step": self.step_perplexity, "min_prob": self.step_min_prob}[name]


@dataclass(frozen=True)
class TracedRequest:
    trace_id: str
    steps: tuple[TracedCall, ...]
    answer: TracedCall
    latency_s: float
    start_s: float | None = None
    end_s: float | None = None

    @property
    def calls(self) -> tuple[TracedCall, ...]:
        return (*self.steps, self.answer)

    @property
    def answer_route(self) -> str:
        return self.answer.route

    @property
    def answer_tokens(self) -> int:
        return self.answer.tokens


def _seconds(span: dict[str, Any], key: str) -> float | None:
    value = span.get(key)
    return None if value is None else int(value) / 1e9


def _call(span: dict[str, Any], route_default: str = "large") -> TracedCall:
    attributes = span.get("attributes", {})
    return TracedCall(
        route=attributes.get("glimp.route", route_default),
        entropy=attributes.get("glimp.entropy"),
        tokens=int(attributes.get("glimp.tokens.generated", 0)),
        model_s=float(attributes.get("glimp.model_s", 0.0)),
        glimpse_s=float(attributes.get("glimp.glimpse_s", 0.0)),
        glimpse_model_s=float(attributes.get("glimp.glimpse.model_s", 0.0)),
        replica=str(attributes.get("glimp.replica", "")),
        end_s=_seconds(span, "end_time_unix_nano"),
        top1_prob=attributes.get("glimp.top1_prob"),
        top2_prob=attributes.get("glimp.top2_prob"),
        policy=str(attributes.get("glimp.policy", "")),
        step_entropy=attributes.get("glimp.step_entropy"),
        step_perplexity=attributes.get("glimp.step_perplexity"),
        step_min_prob=attributes.get("glimp.step_min_prob"),
        post_signal=attributes.get("glimp.post_signal"),
        shadow={
            key.removeprefix(SHADOW_ATTRIBUTE): str(value)
            for key, value in attributes.items()
            if key.startswith(SHADOW_ATTRIBUTE)
        },
    )


def requests_from_spans(spans: Sequence[dict[str, Any]]) -> list[TracedRequest]:
    """Group step and answer spans under their request span (unfinished requests are left out)."""
    steps: dict[str, list[tuple[int, TracedCall]]] = defaultdict(list)
    answers: dict[str, TracedCall] = {}
    roots: dict[str, dict[str, Any]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        if span["name"] == SPAN_REQUEST:
            roots[span["span_id"]] = span
        elif span["name"] == SPAN_STEP and parent:
            index = int(span.get("attributes", {}).get("glimp.step.index", 0))
            steps[parent].append((index, _call(span)))
        elif span["name"] == SPAN_ANSWER and parent:
            answers[parent] = _call(span)
    requests = []
    for span_id, root in roots.items():
        if span_id not in answers:
            continue  # failed or abandoned: no answer, no latency to learn from
        requests.append(
            TracedRequest(
                trace_id=root.get("trace_id", span_id),
                steps=tuple(step for _, step in sorted(steps.get(span_id, []), key=lambda p: p[0])),
                answer=answers[span_id],
                latency_s=float(root.get("attributes", {}).get("glimp.latency_s", 0.0)),
                start_s=_seconds(root, "start_time_unix_nano"),
                end_s=_seconds(root, "end_time_unix_nano"),
            )
        )
    if not requests:
        raise ValueError("no finished glimp.request spans in the trace")
    return with_concurrency(requests)


def with_concurrency(requests: Sequence[TracedRequest]) -> list[TracedRequest]:
    """The requests with each timed call's ``concurrency`` measured from the calls that overlap it
    on the same replica (calls without an end time or a replica keep 1)."""
    by_replica: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for request in requests:
        for call in request.calls:
            if call.end_s is not None and call.replica and call.model_s > 0:
                by_replica[(call.route, call.replica)].append((call.end_s - call.model_s, call.end_s))
    starts: dict[tuple[str, str], list[float]] = {}
    longest: dict[tuple[str, str], float] = {}
    for key, intervals in by_replica.items():
        intervals.sort()
        starts[key] = [start for start, _ in intervals]
        longest[key] = max(end - start for start, end in intervals)

    def concurrency(call: TracedCall) -> float:
        key = (call.route, call.replica)
        if call.end_s is None or key not in by_replica or call.model_s <= 0:
            return call.concurrency
        start, end = call.end_s - call.model_s, call.end_s
        overlap = 0.0
        intervals = by_replica[key]
        first = bisect.bisect_left(starts[key], start - longest[key])  # earlier ones end before it starts
        for other_start, other_end in intervals[first : bisect.bisect_left(starts[key], end)]:
            overlap += max(0.0, min(end, other_end) - max(start, other_start))
        return max(overlap / (end - start), 1.0)

    return [
        replace(
            request,
            steps=tuple(replace(s, concurrency=concurrency(s)) for s in request.steps),
            answer=replace(request.answer, concurrency=concurrency(request.answer)),
        )
        for request in requests
    ]


def entropies(requests: Sequence[TracedRequest]) -> list[float]:
    return [s.entropy for r in requests for s in r.steps if s.entropy is not None]


def signal_values(requests: Sequence[TracedRequest], name: str) -> list[float]:
    """Every traced step's value of a policy's signal (:meth:`TracedCall.signal`)."""
    return [v for r in requests for s in r.steps if (v := s.signal(name)) is not None]


def observed_large_fraction(requests: Sequence[TracedRequest]) -> float:
    steps = [s for r in requests for s in r.steps]
    return sum(s.route == "large" for s in steps) / len(steps) if steps else 0.0

"""Shadow routing: each shadow policy's decision from the acting step's own glimpse, its agreement
with the acting decision and the large fraction it would have had; in the loop, every mode alike
(the small pool's streamed runs of easy steps included), in the records, spans and JSONL traces."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.config import ConfigError, parse_config
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.policies import LARGE, SMALL, ShadowTally, check_shadow, shadow_decisions, tally_shadow
from glimp_ray.step_run import StepRun, run_steps
from glimp_ray.traces import requests_from_spans
from glimp_ray.tracing import make_tracer_provider, read_spans, request_span
from glimp_ray.types import GlimpseSignals, StepRequest, StepResult

MESSAGES = [{"role": "user", "content": "q"}]

# Five scripted glimpses: (entropy, top-1, top-2); margins 0.85, 0.05, 0.05, 0.6, 0.94.
SIGNALS = [(0.2, 0.9, 0.05), (2.0, 0.3, 0.25), (0.5, 0.45, 0.40), (1.5, 0.7, 0.1), (0.1, 0.95, 0.01)]
ACTING = ["small", "large", "small", "large", "small"]  # entropy, τ 1.0
SHADOW = {"top1": 0.5, "margin": 0.7, "entropy": 1.8}
EXPECTED = {  # per step, worked out by hand from SIGNALS
    "top1": ["small", "large", "large", "small", "small"],  # top-1 below 0.5
    "margin": ["small", "large", "large", "large", "small"],  # margin below 0.7
    "entropy": ["small", "large", "small", "small", "small"],  # entropy above 1.8
}


def signals(entropy: float = 0.5, top1: float = 0.6, top2: float = 0.3) -> GlimpseSignals:
    return GlimpseSignals(entropy, top1, top2)


# --- the computation ----------------------------------------------------------------------


def test_shadow_policies_are_normalised_and_refused_clearly() -> None:
    assert check_shadow({"top1": 0.6, "entropy": 1}) == (("entropy", 1.0), ("top1", 0.6))
    assert check_shadow([("margin", 0.2)]) == (("margin", 0.2),)
    assert check_shadow(None) == () and check_shadow({}) == ()
    for name in ("random", "small", "large"):
        with pytest.raises(ValueError, match=f"shadow policy '{name}' reads no signal"):
            check_shadow({name: 0.5})
    with pytest.raises(ValueError, match="unknown shadow policy 'h_stepp'.*entropy, top1, margin, h_step"):
        check_shadow({"h_stepp": 0.5})
    assert check_shadow({"h_step": 0.5, "cue": 0}) == (("cue", 0.0), ("h_step", 0.5))
    with pytest.raises(ValueError, match="given twice"):
        check_shadow([("top1", 0.5), ("top1", 0.6)])
    for bad in (math.nan, math.inf, True, "0.5"):
        with pytest.raises(ValueError, match="finite threshold"):
            check_shadow({"top1": bad})  # type: ignore[dict-item,arg-type]


def test_each_shadow_decides_on_its_own_signal_and_threshold() -> None:
    shadow = check_shadow(SHADOW)
    for step, (h, p1, p2) in enumerate(SIGNALS):
        decided = shadow_decisions(shadow, signals(h, p1, p2))
        assert decided == {name: routes[step] for name, routes in EXPECTED.items()}, step


def test_a_signal_at_threshold_follows_the_rule_of_the_preset() -> None:
    shadow = check_shadow({"top1": 0.5, "entropy": 1.0})
    at = signals(entropy=1.0, top1=0.5, top2=0.1)
    assert shadow_decisions(shadow, at) == {"top1": SMALL, "entropy": SMALL}  # strict: at τ stays small
    assert shadow_decisions(shadow, at, at_threshold=True) == {"top1": LARGE, "entropy": LARGE}  # reference: H >= τ


def test_a_shadow_without_its_signal_has_no_decision_and_never_fails() -> None:
    shadow = check_shadow({"top1": 0.5, "margin": 0.1, "entropy": 1.0})
    assert shadow_decisions(shadow, None) == {}
    # A pool that gives only the entropy leaves the probabilities NaN.
    assert shadow_decisions(shadow, signals(entropy=2.0, top1=math.nan, top2=math.nan)) == {"entropy": LARGE}
    assert shadow_decisions(shadow, signals(entropy=math.inf)) == {"top1": SMALL, "margin": SMALL}


def test_agreement_and_large_fraction_per_shadow_policy() -> None:
    steps = [(ACTING[i], {name: routes[i] for name, routes in EXPECTED.items()}) for i in range(5)]
    steps.append(("large", {}))  # a step without a glimpse counts for no shadow
    tallies = tally_shadow(steps)  # type: ignore[arg-type]
    assert tallies == {
        "top1": ShadowTally(steps=5, agreed=3, large=2),
        "margin": ShadowTally(steps=5, agreed=4, large=3),
        "entropy": ShadowTally(steps=5, agreed=4, large=1),
    }
    assert tallies["top1"].agreement == pytest.approx(0.6) and tallies["top1"].large_fraction == pytest.approx(0.4)
    assert tallies["margin"].to_dict() == {"steps": 5, "agreement": 0.8, "large_fraction": 0.6}
    assert ShadowTally().agreement == 0.0 and ShadowTally().large_fraction == 0.0


def test_the_config_takes_a_mapping_of_name_to_threshold() -> None:
    config = parse_config({"routing": {"policy": "entropy", "shadow": {"top1": 0.6, "margin": 0.1}}})
    assert config.collab_params().shadow == (("margin", 0.1), ("top1", 0.6))
    assert parse_config({}).collab_params().shadow == ()
    with pytest.raises(ConfigError, match=r"routing\.shadow: .*unknown shadow policy 'ppl'"):
        parse_config({"routing": {"shadow": {"ppl": 3.0}}})
    with pytest.raises(ConfigError, match=r"routing\.shadow: .*'verify' needs the large model"):
        parse_config({"routing": {"shadow": {"verify": 0.5}}})
    with pytest.raises(ConfigError, match=r"routing\.shadow: .*'random' reads no signal"):
        parse_config({"routing": {"shadow": {"random": 0.5}}})


def test_a_request_sets_its_own_shadow_policies() -> None:
    params = CollabParams(shadow={"top1": 0.5})  # type: ignore[arg-type]
    assert params.replace(shadow={"margin": 0.2}).shadow == (("margin", 0.2),)
    assert params.replace(shadow=None).shadow == (("top1", 0.5),)  # unset: the app's
    with pytest.raises(ValueError, match="unknown shadow policy"):
        params.replace(shadow={"cues": 1.0})


# --- in the loop --------------------------------------------------------------------------


class RunningEngine(ScriptedEngine):
    """A scripted engine serving the streaming glimpse's runs itself, as the real engines do;
    counts the steps it streamed back."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.streamed = 0

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        async for result in run_steps(self, request, run):
            self.streamed += 1
            yield result


def scripted_pair() -> tuple[RunningEngine, ScriptedEngine]:
    ends = ["delimiter"] * 4 + ["think_end"]
    steps = [
        ScriptedStep(f"s{i}" + "\n\n" * (i < 4), h, end, p1, p2)  # type: ignore[arg-type]
        for i, ((h, p1, p2), end) in enumerate(zip(SIGNALS, ends, strict=True))
    ]
    small = RunningEngine("small", steps)
    large = ScriptedEngine(
        "large", [*(ScriptedStep(f"L{i}\n\n") for i in range(4)), ScriptedStep("L4", 0, "think_end")]
    )
    return small, large


def run(small: Any, large: Any, **params: Any) -> Any:
    collab = Collaborator(small, large, CollabParams(threshold=1.0, shadow=SHADOW, **params))  # type: ignore[arg-type]
    return asyncio.run(collab.run(MESSAGES, request_id="r"))


@pytest.mark.parametrize(("mode", "streaming"), [("fused", True), ("fused", False), ("paper", False)])
def test_every_glimpsed_step_records_each_shadow_decision(mode: str, streaming: bool) -> None:
    small, large = scripted_pair()
    result = run(small, large, mode=mode, streaming_glimpse=streaming)
    assert [s.model for s in result.steps] == ACTING
    for i, step in enumerate(result.steps):
        assert step.shadow == {name: routes[i] for name, routes in EXPECTED.items()}, i
        assert (step.entropy, step.top1_prob, step.top2_prob) == SIGNALS[i]
        assert step.policy == "entropy"
    assert result.answer_record.shadow == {} and result.answer_record.policy == ""
    tallies = result.shadow_tallies
    assert {name: (t.steps, t.agreed, t.large) for name, t in tallies.items()} == {
        "top1": (5, 3, 2),
        "margin": (5, 4, 3),
        "entropy": (5, 4, 1),
    }
    assert result.to_dict()["shadow"]["top1"] == {"steps": 5, "agreement": 0.6, "large_fraction": 0.4}
    # Streamed: the small pool wrote its runs of easy steps itself; the shadows read each one.
    assert (small.streamed > 0) == streaming
    # No model work of their own: the same calls as without shadow policies.
    plain_small, plain_large = scripted_pair()
    plain = CollabParams(threshold=1.0, mode=mode, streaming_glimpse=streaming)  # type: ignore[arg-type]
    asyncio.run(Collaborator(plain_small, plain_large, plain).run(MESSAGES, request_id="r"))
    assert small.calls == plain_small.calls and large.calls == plain_large.calls


@pytest.mark.parametrize("preset", ["glimp", "reference"])
@pytest.mark.parametrize("policy", ["entropy", "top1", "margin"])
def test_a_shadow_of_the_acting_policy_always_agrees(preset: str, policy: str) -> None:
    """The same rule on the same glimpse: values exactly at τ included, under either preset."""
    tau = {"entropy": 0.5, "top1": 0.45, "margin": 0.6}[policy]  # each a scripted value
    small, large = scripted_pair()
    params = CollabParams(preset=preset, entropy="topk", policy=policy, threshold=tau, shadow={policy: tau})  # type: ignore[arg-type]
    result = asyncio.run(Collaborator(small, large, params).run(MESSAGES))
    assert {s.model for s in result.steps} == {SMALL, LARGE}
    assert all(s.shadow == {policy: s.model} for s in result.steps)
    assert result.shadow_tallies[policy].agreement == 1.0


def test_steps_without_a_glimpse_have_no_shadow_decision() -> None:
    small, large = scripted_pair()
    result = run(small, large, policy="random", random_p=0.5, seed=1)
    glimpsed = [s for s in result.steps if s.entropy is not None]
    blind = [s for s in result.steps if s.entropy is None]
    assert glimpsed and blind  # the seed routes some steps large without a glimpse
    assert all(s.model == LARGE and s.shadow == {} and s.top1_prob is None for s in blind)
    assert all(set(s.shadow) == set(SHADOW) for s in glimpsed)
    assert all(s.policy == "random" for s in result.steps)
    assert all(s.shadow == {} for s in run(*scripted_pair(), policy="large").steps)


class EntropyOnly:
    """A pool that gives the glimpse's entropy but not its probabilities."""

    def __init__(self, inner: ScriptedEngine):
        self.inner = inner

    async def step(self, request: StepRequest) -> StepResult:
        result = await self.inner.step(request)
        result.top1_prob = result.top2_prob = None
        return result

    async def release(self, session_id: str) -> None:
        await self.inner.release(session_id)


def test_a_pool_without_the_probabilities_leaves_those_shadows_undecided() -> None:
    small, large = scripted_pair()
    result = run(EntropyOnly(small), large)
    assert [s.model for s in result.steps] == ACTING  # the acting policy is not disturbed
    assert [s.shadow for s in result.steps] == [{"entropy": r} for r in EXPECTED["entropy"]]
    assert all(s.top1_prob is None and s.top2_prob is None for s in result.steps)


# --- spans and JSONL traces ---------------------------------------------------------------


def test_spans_and_jsonl_traces_carry_the_signals_policy_and_shadow(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = make_tracer_provider("jsonl", path).get_tracer("test")
    collab = Collaborator(*scripted_pair(), CollabParams(threshold=1.0, shadow=SHADOW))  # type: ignore[arg-type]

    async def traced() -> None:
        with request_span(tracer, "r1", collab.params) as span:
            async for event in collab.stream(MESSAGES, request_id="r1"):
                span.observe(event)

    asyncio.run(traced())
    spans = read_spans(path)
    [root] = [s for s in spans if s["name"] == "glimp.request"]
    assert root["attributes"]["glimp.shadow.top1.threshold"] == 0.5
    assert root["attributes"]["glimp.shadow.top1.agreement"] == pytest.approx(0.6)
    assert root["attributes"]["glimp.shadow.margin.large_fraction"] == pytest.approx(0.6)
    step = next(s for s in spans if s["name"] == "glimp.step" and s["attributes"]["glimp.step.index"] == 2)
    assert step["attributes"]["glimp.shadow.top1"] == "large" and step["attributes"]["glimp.policy"] == "entropy"
    [request] = requests_from_spans(spans)
    assert [c.shadow for c in request.steps] == [{n: r[i] for n, r in EXPECTED.items()} for i in range(5)]
    assert [(c.top1_prob, c.top2_prob) for c in request.steps] == [s[1:] for s in SIGNALS]
    assert {c.policy for c in request.steps} == {"entropy"} and request.answer.shadow == {}

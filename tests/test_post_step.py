"""Post-step policies: the small model writes each step, its signal (mean entropy, perplexity,
lowest token probability, a cue word, or the large model's verification) keeps it or has the
large model rewrite it from the same context; the decision is in the records, and the shadow
post-step policies read the same step's signals."""

from __future__ import annotations

import asyncio
import math

import pytest

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.base import NonFiniteSignalError
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.policies import (
    LARGE,
    SMALL,
    PostStepPolicy,
    check_shadow,
    make_policy,
    opens_with_cue,
    shadow_decisions,
    step_rewrites,
)
from glimp_ray.types import StepRequest, StepSignals

MESSAGES = [{"role": "user", "content": "q"}]

# Four scripted small steps' signals: (mean entropy, mean log-prob, lowest log-prob).
STEPS = [
    ("First, add 3 and 4.\n\n", StepSignals(6, 0.2, -0.1, -0.5)),  # ppl 1.105, min p 0.607
    ("Wait, that is not right.\n\n", StepSignals(7, 1.5, -1.0, -3.0)),  # ppl 2.718, min p 0.050
    ("So the sum is 7.\n\n", StepSignals(5, 0.9, -0.4, -2.0)),  # ppl 1.492, min p 0.135
    ("Hmm the answer is 7.</think>", StepSignals(5, 0.3, -0.2, -0.7)),  # ppl 1.221, min p 0.497
]
EXPECTED = {  # per step, worked out by hand from STEPS: does the large model rewrite it?
    ("h_step", 1.0): [False, True, False, False],  # mean entropy above 1.0
    ("ppl_step", 1.4): [False, True, True, False],  # perplexity above 1.4
    ("min_prob", 0.1): [False, True, False, False],  # lowest probability below 0.1
    ("cue", 0.0): [False, True, False, True],  # opens with "wait" or "hmm"
}


def pair(probe: object = None) -> tuple[ScriptedEngine, ScriptedEngine]:
    finish = ["delimiter", "delimiter", "delimiter", "think_end"]
    small = ScriptedEngine(
        "small",
        [ScriptedStep(text, 0.1, f, signals=s) for (text, s), f in zip(STEPS, finish, strict=True)],  # type: ignore[arg-type]
    )
    large_steps = [ScriptedStep(f"L{i}.\n\n") for i in range(3)] + [
        ScriptedStep("L3.</think>", finish_reason="think_end")
    ]
    large = ScriptedEngine("large", large_steps, answer="7", probe=probe)  # type: ignore[arg-type]
    return small, large


def run(policy: str, threshold: float, **kw: object) -> tuple[object, ScriptedEngine, ScriptedEngine]:
    small, large = pair(kw.pop("probe", None))
    collab = Collaborator(small, large, CollabParams(policy=policy, threshold=threshold, **kw))  # type: ignore[arg-type]
    return asyncio.run(collab.run(messages=MESSAGES)), small, large


@pytest.mark.parametrize("policy,threshold", list(EXPECTED))
def test_each_post_step_policy_rewrites_exactly_the_steps_its_signal_flags(policy: str, threshold: float) -> None:
    result, small, large = run(policy, threshold)
    expected = EXPECTED[(policy, threshold)]
    steps = result.steps  # type: ignore[attr-defined]
    assert [s.rewritten for s in steps] == expected
    assert [s.model for s in steps] == [LARGE if r else SMALL for r in expected]
    # A rewritten step is the large model's, from the same context; a kept one is the small model's.
    for i, (step, rewritten) in enumerate(zip(steps, expected, strict=True)):
        assert step.text.startswith(f"L{i}.") if rewritten else step.text == STEPS[i][0]
        assert step.draft_tokens == (len(STEPS[i][0]) if rewritten else 0)
        assert step.policy == policy
    # The small model wrote every step once, asked for its signals; the large one only the rewrites.
    drafts = [c for c in small.calls if c.generate is not None and not c.close_thinking]
    assert len(drafts) == 4 and all(c.generate.signals for c in drafts)  # type: ignore[union-attr]
    rewrites = [c for c in large.calls if c.generate is not None and not c.close_thinking]
    assert len(rewrites) == sum(expected)
    assert all(not c.generate.signals for c in rewrites)  # type: ignore[union-attr]
    # The records carry the small model's step signals and the value decided on.
    first = steps[0]
    assert first.step_entropy == pytest.approx(0.2) and first.step_min_prob == pytest.approx(math.exp(-0.5))
    assert first.step_perplexity == pytest.approx(math.exp(0.1))
    if policy == "cue":
        assert first.post_signal is None
    else:
        assert first.post_signal == pytest.approx(
            {"h_step": 0.2, "ppl_step": math.exp(0.1), "min_prob": math.exp(-0.5)}[policy]
        )


def test_a_rewrite_continues_from_the_context_the_draft_saw() -> None:
    result, small, large = run("h_step", 1.0)
    rewrite = next(c for c in large.calls if c.generate is not None and not c.close_thinking)
    draft = [c for c in small.calls if c.generate is not None][1]
    assert rewrite.transcript == draft.transcript == STEPS[0][0]  # the draft is not in it
    # The next step's context holds the large model's step, not the discarded draft.
    third = [c for c in small.calls if c.generate is not None][2]
    assert third.transcript == STEPS[0][0] + "L1.\n\n"


def test_a_signal_that_never_triggers_is_the_small_model_alone() -> None:
    """Greedy equivalence, on the scripted pair: τ above every step's entropy keeps every step."""
    post, _, large = run("h_step", 100.0, temperature=0.0)
    alone, _, _ = run("small", 1.0, temperature=0.0)
    assert post.reasoning == alone.reasoning  # type: ignore[attr-defined]
    assert [s.model for s in post.steps] == [SMALL] * 4  # type: ignore[attr-defined]
    assert all(c.close_thinking for c in large.calls)  # the large model only answers


def test_verify_scores_each_step_with_the_large_model_and_rewrites_below_tau() -> None:
    scores = iter([0.9, 0.2, 0.6, 0.95])
    seen: list[StepRequest] = []

    def probe(request: StepRequest) -> float:
        seen.append(request)
        return next(scores)

    result, _, large = run("verify", 0.5, probe=probe, verify_suffix="\n\nCorrect? ", verify_tokens=["yes"])
    steps = result.steps  # type: ignore[attr-defined]
    assert [s.rewritten for s in steps] == [False, True, False, False]
    assert [s.post_signal for s in steps] == [0.9, 0.2, 0.6, 0.95]
    # Each check reads the context, the small model's step and the suffix, and probes the "yes" tokens.
    assert seen[1].transcript == STEPS[0][0] and seen[1].continuation == STEPS[1][0] + "\n\nCorrect? "
    assert seen[1].glimpse is not None and seen[1].glimpse.probe == ("yes",) and seen[1].generate is None
    assert seen[2].transcript == STEPS[0][0] + "L1.\n\n" and seen[2].continuation == STEPS[2][0] + "\n\nCorrect? "
    assert all(s.check_s >= 0 for s in steps)


def test_a_missing_signal_fails_the_step_instead_of_keeping_it_silently() -> None:
    small = ScriptedEngine("small", [ScriptedStep("a\n\n")])
    large = ScriptedEngine("large", [ScriptedStep("b\n\n")])

    async def no_signals(request: StepRequest):  # type: ignore[no-untyped-def]
        result = await ScriptedEngine.step(small, request)
        result.step_signals = None
        return result

    small.step = no_signals  # type: ignore[method-assign]
    with pytest.raises(NonFiniteSignalError, match="no step signals"):
        asyncio.run(Collaborator(small, large, CollabParams(policy="ppl_step", threshold=2.0)).run(messages=MESSAGES))
    with pytest.raises(NonFiniteSignalError):
        step_rewrites("h_step", math.nan, 1.0)


def test_the_rules_on_their_own() -> None:
    assert step_rewrites("h_step", 1.2, 1.0) and not step_rewrites("h_step", 1.0, 1.0)
    assert step_rewrites("h_step", 1.0, 1.0, at_threshold=True)
    assert step_rewrites("min_prob", 0.05, 0.1) and not step_rewrites("min_prob", 0.1, 0.1)
    assert step_rewrites("verify", 0.3, 0.5) and not step_rewrites("verify", 0.7, 0.5)
    assert opens_with_cue("  Wait, no.", ("wait",)) and opens_with_cue("hmm\nso", ("hmm",))
    assert not opens_with_cue("Waiting for the sum", ("wait",))  # a whole word only
    assert not opens_with_cue("So wait.", ("wait",))
    policy = make_policy("cue", cues=("alternatively",))
    assert isinstance(policy, PostStepPolicy) and policy.post_step and not policy.needs_glimpse
    assert policy.rewrites(None, "Alternatively, try 5.") and not policy.rewrites(None, "Wait.")
    with pytest.raises(ValueError, match="unknown post-step policy"):
        PostStepPolicy("entropy_step", 1.0)


def test_shadow_post_step_policies_read_the_small_models_own_steps() -> None:
    shadow = {"h_step": 1.0, "min_prob": 0.1, "cue": 0.0, "top1": 0.5}
    result, small, _ = run("entropy", 1.0, shadow=shadow)
    steps = result.steps  # type: ignore[attr-defined]
    assert all(s.model == SMALL for s in steps)  # glimpse entropy 0.1: every step small
    for i, step in enumerate(steps):
        for name, tau in (("h_step", 1.0), ("min_prob", 0.1), ("cue", 0.0)):
            assert step.shadow[name] == (LARGE if EXPECTED[(name, tau)][i] else SMALL)
    # Only a shadow reading step signals makes the engine compute them.
    assert all(c.generate.signals for c in small.calls if c.generate is not None and not c.close_thinking)  # type: ignore[union-attr]
    plain, small2, _ = run("entropy", 1.0, shadow={"top1": 0.5, "cue": 0.0})
    assert not any(c.generate.signals for c in small2.calls if c.generate is not None)  # type: ignore[union-attr]
    assert [s.shadow["cue"] for s in plain.steps] == [SMALL, LARGE, SMALL, LARGE]  # type: ignore[attr-defined]


def test_shadow_post_step_decisions_and_their_refusals() -> None:
    step = StepSignals(4, 2.0, -0.5, -4.0)
    decided = shadow_decisions(check_shadow({"h_step": 1.5, "ppl_step": 2.0}), None, step=step, text="x")
    assert decided == {"h_step": LARGE, "ppl_step": SMALL}
    assert shadow_decisions(check_shadow({"h_step": 1.5}), None) == {}  # a large step: no signals, no decision
    with pytest.raises(ValueError, match="needs the large model"):
        check_shadow({"verify": 0.5})


def test_bad_post_step_parameters_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="cues"):
        CollabParams(policy="cue", cues=())
    with pytest.raises(ValueError, match="verify_tokens"):
        CollabParams(policy="verify", verify_tokens=[""])
    with pytest.raises(ValueError, match="verify_suffix"):
        CollabParams(policy="verify", verify_suffix="  ")


def test_calibrate_takes_each_policys_tau_from_its_traced_signal() -> None:
    from glimp_ray.planner import calibrate
    from glimp_ray.traces import TracedCall, TracedRequest

    def call(i: int) -> TracedCall:  # 20 steps: entropy i/10, top-1 1 - i/20, lowest token probability i/40
        return TracedCall("small", i / 10, 5, 0.1, top1_prob=1 - i / 20, top2_prob=0.0, step_min_prob=i / 40)

    requests = [TracedRequest(f"t{r}", tuple(call(10 * r + i) for i in range(10)), call(0), 1.0) for r in range(2)]
    entropy = calibrate(requests, 0.25)
    assert entropy["policy"] == "entropy" and entropy["predicted_large_fraction"] == pytest.approx(0.25)
    assert entropy["threshold"] == pytest.approx(1.425)  # 75th percentile of 0.0 .. 1.9
    low = calibrate(requests, 0.25, policy="min_prob")  # below τ goes large
    assert low["threshold"] == pytest.approx(0.11875) and low["predicted_large_fraction"] == pytest.approx(0.25)
    top1 = calibrate(requests, 0.5, policy="top1")
    assert top1["predicted_large_fraction"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no h_step values"):
        calibrate(requests, 0.25, policy="h_step")
    with pytest.raises(ValueError, match="calibrate chooses"):
        calibrate(requests, 0.25, policy="cue")

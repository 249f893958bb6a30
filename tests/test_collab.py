"""The loop on scripted fake engines: routing, modes, stop rules, answer, sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.types import StepRequest, StepResult

MESSAGES = [{"role": "user", "content": "What is 6 x 7?"}]
ENTROPIES = [0.5, 2.0, 0.9, 1.5, 0.1]


def scripted_pair(entropies: list[float] = ENTROPIES, last: str = "think_end") -> tuple[ScriptedEngine, ScriptedEngine]:
    n = len(entropies)
    small = ScriptedEngine(
        "small",
        [ScriptedStep(f"s{i}\n\n", e) for i, e in enumerate(entropies[:-1])]
        + [ScriptedStep(f"s{n - 1}", entropies[-1], last)],  # type: ignore[arg-type]
        answer="small-answer",
    )
    large = ScriptedEngine(
        "large",
        [ScriptedStep(f"L{i}\n\n") for i in range(n - 1)] + [ScriptedStep(f"L{n - 1}", 0.0, last)],  # type: ignore[arg-type]
        answer="large-answer",
    )
    return small, large


def run(small: Any, large: Any, **overrides: Any) -> Any:
    return asyncio.run(Collaborator(small, large, CollabParams()).run(MESSAGES, **overrides))


def test_entropy_routing_matches_the_algorithm() -> None:
    small, large = scripted_pair()
    result = run(small, large, threshold=1.0)
    assert [s.model for s in result.steps] == ["small", "large", "small", "large", "small"]
    assert [s.entropy for s in result.steps] == ENTROPIES
    assert result.reasoning == "s0\n\nL1\n\ns2\n\nL3\n\ns4"
    assert result.answer == "large-answer"
    assert result.stop_reason == "think_end"
    assert result.large_step_fraction == pytest.approx(0.4)
    # Fused: every small call glimpses with τ and generates; the large model never glimpses.
    assert all(c.glimpse is not None and c.glimpse.threshold == 1.0 for c in small.calls)
    assert all(c.generate is not None for c in small.calls)
    assert all(c.glimpse is None for c in large.calls)
    # Each large step starts from the transcript written so far (the glimpse was discarded).
    assert [c.transcript for c in large.calls[:2]] == ["s0\n\n", "s0\n\nL1\n\ns2\n\n"]
    assert large.calls[-1].close_thinking and large.calls[-1].transcript == result.reasoning


def test_threshold_extremes() -> None:
    assert run(*scripted_pair(), threshold=100.0).large_step_fraction == 0.0
    assert run(*scripted_pair(), threshold=-1.0).large_step_fraction == 1.0


def test_paper_mode_glimpses_then_generates_from_scratch() -> None:
    fused = run(*scripted_pair(), mode="fused")
    small, large = scripted_pair()
    paper = run(small, large, mode="paper")
    assert paper.reasoning == fused.reasoning
    assert [s.model for s in paper.steps] == [s.model for s in fused.steps]
    glimpses = [c for c in small.calls if c.generate is None]
    assert len(glimpses) == len(ENTROPIES)  # one separate glimpse per step
    assert all(c.glimpse is not None and c.glimpse.threshold is None for c in glimpses)


def test_small_policy_never_touches_the_large_model() -> None:
    small, large = scripted_pair()
    result = run(small, large, policy="small")
    assert {s.model for s in result.steps} == {"small"}
    assert result.answer == "small-answer"
    assert large.calls == [] and large.released == []


def test_large_policy_never_touches_the_small_model() -> None:
    small, large = scripted_pair()
    result = run(small, large, policy="large")
    assert {s.model for s in result.steps} == {"large"}
    assert all(s.entropy is None for s in result.steps)
    assert small.calls == []


def test_random_policy_is_reproducible_with_a_seed() -> None:
    entropies = [0.0] * 40
    a = run(*scripted_pair(entropies), policy="random", random_p=0.5, seed=3, request_id="same")
    b = run(*scripted_pair(entropies), policy="random", random_p=0.5, seed=3, request_id="same")
    assert [s.model for s in a.steps] == [s.model for s in b.steps]
    assert 0.2 < a.large_step_fraction < 0.8


def test_eos_ends_thinking() -> None:
    result = run(*scripted_pair(last="eos"), threshold=100.0)
    assert result.stop_reason == "eos"
    assert len(result.steps) == len(ENTROPIES)


def test_repeated_step_stops_thinking() -> None:
    small = ScriptedEngine("small", [ScriptedStep("a\n\n"), ScriptedStep("loop\n\n")])
    large = ScriptedEngine("large", [ScriptedStep("x\n\n")], answer="done")
    result = run(small, large, threshold=100.0)
    assert result.stop_reason == "repeat"
    assert [s.text for s in result.steps] == ["a\n\n", "loop\n\n", "loop\n\n"]
    assert result.answer == "done"


def test_thinking_budget_caps_tokens() -> None:
    small = ScriptedEngine("small", [ScriptedStep(f"step{i:02d}\n\n") for i in range(50)])
    large = ScriptedEngine("large", [ScriptedStep("x\n\n")])
    result = run(small, large, threshold=100.0, thinking_budget=20)
    assert result.stop_reason == "budget"
    assert result.thinking_tokens == 20
    # 8-character steps: two whole steps, then a third cut at the remaining 4 tokens.
    assert [s.tokens for s in result.steps] == [8, 8, 4]
    assert result.steps[-1].finish_reason == "length"
    assert [c.generate.max_tokens for c in small.calls if c.generate] == [20, 12, 4]


def test_step_max_tokens_and_answer_max_tokens() -> None:
    small = ScriptedEngine("small", [ScriptedStep("abcdefghij\n\n"), ScriptedStep("end", 0, "think_end")])
    large = ScriptedEngine("large", [ScriptedStep("x")], answer="a long answer")
    result = run(small, large, threshold=100.0, step_max_tokens=4, answer_max_tokens=6)
    assert result.steps[0].text == "abcd" and result.steps[0].finish_reason == "length"
    assert result.answer == "a long" and result.answer_record.finish_reason == "length"


def test_sampling_and_sessions_are_per_request_and_pool() -> None:
    small, large = scripted_pair()
    result = run(small, large, seed=11, temperature=0.2, top_p=0.5)
    sessions = {c.session_id for c in small.calls} | {c.session_id for c in large.calls}
    assert sessions == {f"{result.request_id}:small", f"{result.request_id}:large"}
    seeds = [c.generate.sampling.seed for c in small.calls + large.calls if c.generate]
    assert len(set(seeds)) == len(seeds)  # distinct per step and model
    assert all(c.generate.sampling.temperature == 0.2 for c in small.calls if c.generate)
    assert sorted(small.released + large.released) == sorted(sessions)


class FailingClient:
    def __init__(self) -> None:
        self.released: list[str] = []

    async def step(self, request: StepRequest) -> StepResult:
        raise RuntimeError("pool down")

    async def release(self, session_id: str) -> None:
        self.released.append(session_id)


def test_sessions_are_released_when_a_pool_fails() -> None:
    small, _ = scripted_pair([5.0, 5.0])
    large = FailingClient()
    with pytest.raises(RuntimeError, match="pool down"):
        run(small, large, threshold=1.0, request_id="r1")
    assert small.released == ["r1:small"] and large.released == ["r1:large"]


def test_stream_yields_each_step_then_the_result() -> None:
    async def collect() -> list[Any]:
        return [e async for e in Collaborator(*scripted_pair()).stream(MESSAGES)]

    events = asyncio.run(collect())
    assert [type(e).__name__ for e in events] == ["StepRecord"] * len(ENTROPIES) + ["CollabResult"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy": "greedy"}, "policy"),
        ({"mode": "turbo"}, "mode"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"step_max_tokens": 0}, "step_max_tokens"),
        ({"entropy": "partial"}, "entropy"),
        ({"random_p": 2.0}, "random_p"),
        ({"bogus": 1}, "unknown parameter"),
    ],
)
def test_bad_parameters_raise_clear_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(*scripted_pair(), **overrides)


def test_messages_or_prompt_exactly_one() -> None:
    collab = Collaborator(*scripted_pair())
    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(collab.run(MESSAGES, prompt="hi"))
    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(collab.run())


def random_routes(seed: int | None, request_id: str) -> tuple[str, ...]:
    result = run(*scripted_pair([0.0] * 12), policy="random", random_p=0.5, seed=seed, request_id=request_id)
    return tuple(s.model for s in result.steps)


def test_a_seed_routes_randomly_alike_whatever_the_request_id() -> None:
    # The API and batch jobs draw request ids at random: the seed alone must fix the routes.
    assert len({random_routes(3, f"r{i}") for i in range(6)}) == 1
    assert random_routes(3, "a") != random_routes(4, "a")  # another seed, other routes


def test_without_a_seed_random_routes_vary_by_request() -> None:
    assert len({random_routes(None, "same") for _ in range(6)}) > 1


def endless(name: str, context: int, answer: str = "the answer") -> ScriptedEngine:
    """Distinct steps of 7 tokens that never end the thinking, within ``context`` tokens."""
    steps = [ScriptedStep(f"step{c}\n\n", 0.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return ScriptedEngine(name, steps, answer=answer, context=context)


def test_thinking_that_fills_the_context_closes_and_answers_in_the_room_left() -> None:
    prompt_tokens = len(MESSAGES[0]["content"])
    small, large = endless("small", prompt_tokens + 40), endless("large", prompt_tokens + 60)
    result = run(small, large, policy="small", answer_model="large", thinking_budget=10_000)
    # 5 whole steps (35 tokens), a 6th cut at the small model's context (5 tokens).
    assert [s.tokens for s in result.steps] == [7] * 5 + [5]
    assert result.stop_reason == "context"
    assert result.answer == "the answer" and result.answer_record.finish_reason == "eos"


def test_a_full_context_refuses_the_next_step_and_leaves_no_room_for_the_answer() -> None:
    prompt_tokens = len(MESSAGES[0]["content"])
    small = endless("small", prompt_tokens + 14)  # exactly two steps fit
    result = run(small, small, policy="small", thinking_budget=10_000)
    assert [s.tokens for s in result.steps] == [7, 7]
    assert result.stop_reason == "context"
    # The answer model has no room: an empty answer cut by length, not an error.
    assert result.answer == "" and result.answer_record.finish_reason == "length"


def test_a_prompt_longer_than_the_context_is_still_the_clients_error() -> None:
    from glimp_ray.engine.base import PromptTooLongError

    small = endless("small", 5)
    with pytest.raises(PromptTooLongError):
        run(small, small, policy="small")


def test_stop_strings_end_the_answer_but_not_the_thinking() -> None:
    small, large = scripted_pair()
    large.answer = "The result is 42. Done."
    result = run(small, large, threshold=1.0, stop=(". ", "xyz"))
    assert result.answer == "The result is 42"  # cut before the first stop, which is left out
    assert result.reasoning == "s0\n\nL1\n\ns2\n\nL3\n\ns4"
    assert large.calls[-1].generate.stop == (". ", "xyz")  # the engine stops there too
    assert all(c.generate.stop == ("\n\n",) for c in [*small.calls, *large.calls[:-1]])


@pytest.mark.parametrize("bad", [{"threshold": float("nan")}, {"threshold": float("inf")}, {"stop": ("",)}])
def test_non_finite_threshold_and_empty_stops_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CollabParams().replace(**bad)

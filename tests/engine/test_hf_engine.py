"""The transformers engine on tiny random models built in the test session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.engine.base import EngineError, PromptTooLongError
from glimp_ray.engine.recording import RecordingClient
from glimp_ray.engine.stops import cut_step_text
from glimp_ray.engine.text import render_prompt
from glimp_ray.entropy import glimpse_entropy
from glimp_ray.params import PRESET_RULES
from glimp_ray.step_run import StepRun, run_steps
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult
from tests.numeric import entropy_approx, midpoint_threshold

MESSAGES = ({"role": "user", "content": "What is 6 times 7?"},)
GREEDY = SamplingParams(temperature=0)
# A space delimiter gives the random tiny models many steps; greedy keeps them exact.
PARAMS = CollabParams(temperature=0, delimiter=" ", step_max_tokens=24, thinking_budget=150, answer_max_tokens=12)


def step(engine: Any, **kwargs: Any) -> StepResult:
    if "prompt" not in kwargs:
        kwargs.setdefault("messages", MESSAGES)
    return asyncio.run(engine.step(StepRequest(**kwargs)))


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> GenerateSpec:
    return GenerateSpec(max_tokens, stop, GREEDY)


def KeepSessions(engine: Any) -> RecordingClient:
    """Forwards steps but not releases, so a test can inspect the sessions afterwards."""
    return RecordingClient(engine, forward_release=False)


class AlwaysCold(RecordingClient):
    """Releases the session after every call: every call is served from scratch."""

    async def step(self, request: StepRequest) -> StepResult:
        result = await super().step(request)
        await self.client.release(request.session_id)
        return result

    async def run_steps(self, request: StepRequest, run: StepRun) -> AsyncIterator[StepResult]:
        async for result in run_steps(self, request, run):  # each step a cold call of its own
            yield result


def median_threshold(make_engine: Any, first_step_easy: bool = False) -> float:
    """A τ that sends about half the steps large, midway between two of their entropies (with
    ``first_step_easy``: just above the first step's)."""
    collab = Collaborator(make_engine("small"), make_engine("large"), PARAMS)
    result = asyncio.run(collab.run(MESSAGES, policy="small"))
    entropies = [s.entropy for s in result.steps]
    return midpoint_threshold(entropies, above=entropies[0] if first_step_easy else None)


def test_glimpse_entropy_matches_a_plain_forward(make_engine: Any) -> None:
    engine = make_engine("small")
    text, _ = render_prompt(engine.tokenizer, StepRequest("p", MESSAGES, glimpse=GlimpseSpec()), "<think>", "</think>")
    ids = torch.tensor([engine.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, -1]
    full = step(engine, session_id="a", glimpse=GlimpseSpec("full"))
    topk = step(engine, session_id="b", glimpse=GlimpseSpec("topk", top_k=20))
    assert full.finish_reason == "glimpse" and full.token_ids == []
    assert full.entropy == entropy_approx(glimpse_entropy(logits, "full"))
    assert topk.entropy == entropy_approx(glimpse_entropy(logits, "topk", 20))


def test_runs_of_easy_steps_match_one_call_per_step(make_engine: Any) -> None:
    """Streaming glimpse (the fused default) against one small call per step: the same records.
    (Through Serve a run is one pool call: tests/deployments/test_streaming_glimpse.py.)"""
    tau = median_threshold(make_engine)
    results, calls = {}, {}
    for streaming in (True, False):
        small = RecordingClient(make_engine("small"))
        collab = Collaborator(small, make_engine("large"), PARAMS)
        results[streaming] = asyncio.run(collab.run(MESSAGES, threshold=tau, streaming_glimpse=streaming))
        calls[streaming] = len(small.results)
    streamed, per_step = results[True], results[False]
    assert {s.model for s in streamed.steps} == {"small", "large"}
    assert [(s.model, s.text, s.tokens, s.finish_reason) for s in streamed.steps] == [
        (s.model, s.text, s.tokens, s.finish_reason) for s in per_step.steps
    ]
    assert [s.entropy for s in streamed.steps] == entropy_approx([s.entropy for s in per_step.steps])
    assert streamed.answer == per_step.answer
    assert calls[True] == calls[False]  # the engine's run yields one result per step, as step calls do


def _run_spec(budget: int = 150) -> StepRun:
    p = PARAMS
    return StepRun(0, 0, budget, p.step_max_tokens, p.delimiter, PRESET_RULES["glimp"], 0.0, 1.0, None, None)


async def _collect(steps: Any) -> list[StepResult]:
    return [result async for result in steps]


def test_a_run_inside_the_step_loop_matches_one_call_per_step(make_engine: Any, monkeypatch: Any) -> None:
    """HFEngine serves a run of easy steps inside its step loop: never through ``step`` (no round
    trip per step), with the results one call per step gives."""
    tau = median_threshold(make_engine, first_step_easy=True)
    request = StepRequest("run", MESSAGES, glimpse=GlimpseSpec(threshold=tau))
    per_step = asyncio.run(_collect(run_steps(RecordingClient(make_engine("small")), request, _run_spec())))
    engine = make_engine("small")

    async def no_step(request: StepRequest) -> StepResult:
        raise AssertionError("a run inside the loop makes no step calls")

    monkeypatch.setattr(engine, "step", no_step)
    inside = asyncio.run(_collect(engine.run_steps(request, _run_spec())))
    assert len(inside) > 1 and inside[-1].routed  # a run of several steps, ended by a hard one
    assert [(r.token_ids, r.text, r.finish_reason) for r in inside] == [
        (r.token_ids, r.text, r.finish_reason) for r in per_step
    ]
    assert [r.entropy for r in inside] == entropy_approx([r.entropy for r in per_step])
    assert all(r.reused_tokens > 0 for r in inside[1:])  # each step goes on from the session's KV
    assert engine.queued == 0 and not any(s.busy for s in engine.sessions)


def test_collaborator_on_engines_gives_the_per_step_records(make_engine: Any) -> None:
    tau = median_threshold(make_engine)
    results = {
        streaming: asyncio.run(
            Collaborator(make_engine("small"), make_engine("large"), PARAMS).run(
                MESSAGES, threshold=tau, streaming_glimpse=streaming
            )
        )
        for streaming in (True, False)
    }
    streamed, per_step = results[True], results[False]
    assert {s.model for s in streamed.steps} == {"small", "large"}
    assert [(s.model, s.text, s.tokens, s.finish_reason) for s in streamed.steps] == [
        (s.model, s.text, s.tokens, s.finish_reason) for s in per_step.steps
    ]
    assert streamed.answer == per_step.answer


def test_closing_a_run_midway_releases_everything(make_engine: Any) -> None:
    engine = make_engine("small")
    request = StepRequest("run", MESSAGES, glimpse=GlimpseSpec(threshold=1e9))  # every step easy

    async def take_two() -> list[StepResult]:
        steps = engine.run_steps(request, _run_spec(budget=10_000))
        got = [await anext(steps), await anext(steps)]
        await steps.aclose()  # the caller goes away with the run still going
        await asyncio.sleep(0.2)  # the step in flight stops at the engine's next turn
        return got

    got = asyncio.run(take_two())
    assert len(got) == 2 and not any(r.routed for r in got)
    assert engine.queued == 0 and not engine.scheduler.has_work
    assert not any(s.busy for s in engine.sessions)
    again = asyncio.run(_collect(engine.run_steps(request, _run_spec(budget=40))))  # it serves on
    assert again and not any(r.routed for r in again)


def test_a_release_is_not_held_back_by_an_abandoned_step(make_engine: Any) -> None:
    """A run's next step queued when its caller went away holds nothing: the session's release
    applies at once (the abandoned step is dropped at admission)."""
    from glimp_ray.engine.sequence import Sequence

    engine = make_engine("small")
    step(engine, session_id="x", generate=greedy(2))
    abandoned = Sequence(StepRequest("x", MESSAGES, generate=greedy(2)), lambda outcome: None)
    abandoned.aborted = True
    engine.accept([abandoned], set())
    engine.accept([], {"x"})
    assert "x" not in engine.sessions and not engine._deferred_releases


def test_a_deferred_release_applies_once_its_waiting_step_is_abandoned(make_engine: Any) -> None:
    """The release comes while the session's next step waits; then that step's caller goes away:
    the step is dropped at admission and the release still applies."""
    from glimp_ray.engine.sequence import Sequence

    engine = make_engine("small")
    step(engine, session_id="y", generate=greedy(2))
    waiting = Sequence(StepRequest("y", MESSAGES, generate=greedy(2)), lambda outcome: None)
    engine.accept([waiting], set())
    engine.accept([], {"y"})  # the release comes while the step waits: deferred
    assert "y" in engine._deferred_releases
    waiting.aborted = True  # then its caller goes away
    engine.run_once()  # the worker's next turn drops it
    assert "y" not in engine.sessions and not engine._deferred_releases and not engine.scheduler.has_work


def test_a_release_ends_a_run_after_its_current_step(make_engine: Any) -> None:
    """A release that overtakes the run's cancellation (a client gone): the run stops after its
    current step instead of bringing the released session back."""
    engine = make_engine("small")
    request = StepRequest("gone", MESSAGES, glimpse=GlimpseSpec(threshold=1e9))  # every step easy

    async def released_midway() -> list[StepResult]:
        got = []
        async for result in engine.run_steps(request, _run_spec(budget=10_000)):
            got.append(result)
            if len(got) == 2:
                await engine.release("gone")
        return got

    got = asyncio.run(released_midway())
    assert 2 <= len(got) <= 4  # the run ended within a step or two of the release, on its own
    assert "gone" not in engine.sessions and not engine._deferred_releases and engine.queued == 0


def test_fused_and_paper_modes_identical_under_greedy(make_engine: Any) -> None:
    tau = median_threshold(make_engine)
    results = {}
    for mode in ("fused", "paper"):
        collab = Collaborator(make_engine("small"), make_engine("large"), PARAMS)
        results[mode] = asyncio.run(collab.run(MESSAGES, threshold=tau, mode=mode))
    fused, paper = results["fused"], results["paper"]
    assert {s.model for s in fused.steps} == {"small", "large"}  # both routes exercised
    assert fused.reasoning == paper.reasoning and fused.answer == paper.answer
    assert [s.model for s in fused.steps] == [s.model for s in paper.steps]
    assert [s.entropy for s in fused.steps] == entropy_approx([s.entropy for s in paper.steps])
    # A large step's record keeps what its small glimpse cost; paper mode glimpses every step.
    assert all(s.glimpse_prefill_tokens > 0 for s in fused.steps if s.model == "large")
    assert all(s.glimpse_prefill_tokens > 0 for s in paper.steps)


def test_each_model_forwards_each_transcript_token_once(make_engine: Any) -> None:
    tau = median_threshold(make_engine)
    small, large = make_engine("small"), make_engine("large")
    clients = {"small": KeepSessions(small), "large": KeepSessions(large)}
    result = asyncio.run(
        Collaborator(clients["small"], clients["large"], PARAMS).run(MESSAGES, threshold=tau, request_id="r")
    )
    assert {s.model for s in result.steps} == {"small", "large"}
    for route, engine in (("small", small), ("large", large)):
        session = engine.sessions.peek(f"r:{route}")
        results = clients[route].results
        # No token ran through the model twice, and the counters add up to it.
        assert engine.forwarded_tokens == session.kv_len
        decoded = sum(max(r.generated_tokens - 1, 0) for r in results)
        assert sum(r.prefill_tokens for r in results) + decoded == engine.forwarded_tokens
        # After its first call, a model prefills only text it has not seen.
        assert all(r.reused_tokens > 0 for r in results[1:])
        assert sum(r.prefill_tokens for r in results) < session.kv_len


def test_an_engine_that_never_saw_the_session_gives_the_same_output(make_engine: Any) -> None:
    # The small tokenizer is character-level, so a cold engine re-tokenizing the transcript
    # sees exactly the tokens the warm engine kept.
    params = PARAMS.replace(policy="small")
    warm = asyncio.run(Collaborator(KeepSessions(make_engine("small")), make_engine("large"), params).run(MESSAGES))
    cold_client = AlwaysCold(make_engine("small"))
    cold = asyncio.run(Collaborator(cold_client, make_engine("large"), params).run(MESSAGES))
    assert len(warm.steps) > 2
    assert cold.reasoning == warm.reasoning and cold.answer == warm.answer
    assert all(r.reused_tokens == 0 for r in cold_client.results)


def test_routed_glimpse_leaves_no_token_in_the_cache(make_engine: Any) -> None:
    engine = make_engine("small")
    routed = step(engine, session_id="s", glimpse=GlimpseSpec(threshold=-1.0), generate=greedy(8))
    assert routed.routed and routed.finish_reason == "routed" and routed.token_ids == []
    session = engine.sessions.peek("s")
    assert len(session.tokens) == session.kv_len == routed.context_tokens
    # The same step kept small afterwards reuses the whole prefix.
    kept = step(engine, session_id="s", glimpse=GlimpseSpec(threshold=None), generate=greedy(8))
    assert kept.entropy == entropy_approx(routed.entropy)
    assert kept.reused_tokens == routed.context_tokens - 1 and kept.prefill_tokens == 1


def test_stops_at_the_delimiter_keeping_it_in_the_step(make_engine: Any) -> None:
    engine = make_engine("large")
    free = step(engine, session_id="free", generate=greedy(60))
    delimiter = free.text[20:22]  # two characters the model is known to produce
    first = free.text.find(delimiter)
    cut = step(engine, session_id="cut", generate=greedy(60, (delimiter,)))
    assert cut.finish_reason == "delimiter"
    assert cut.text == free.text[: first + len(delimiter)]


def test_think_end_marker_ends_thinking_but_not_the_answer(make_engine: Any) -> None:
    probe = make_engine("small")
    free = step(probe, session_id="p", generate=greedy(40))
    marker = free.text[10:13]
    engine = make_engine("small", think_end=marker)
    thinking = step(engine, session_id="t", generate=greedy(40, ("never-seen",)))
    assert thinking.finish_reason == "think_end"
    assert thinking.text == free.text[: free.text.find(marker)]
    answer = step(engine, session_id="a", close_thinking=True, generate=greedy(5))
    assert answer.finish_reason == "length" and answer.generated_tokens == 5


def test_eos_ends_generation_and_is_not_in_the_text(make_engine: Any) -> None:
    engine = make_engine("small")
    free = step(engine, session_id="p", generate=greedy(30))
    eos = free.token_ids[7]
    engine.eos_ids = frozenset({eos})
    ended = step(engine, session_id="e", generate=greedy(30))
    index = free.token_ids.index(eos)
    assert ended.finish_reason == "eos"
    assert ended.token_ids == free.token_ids[: index + 1]
    assert ended.text == engine.tokenizer.decode(free.token_ids[:index])


def test_length_limit_and_seeded_sampling(make_engine: Any) -> None:
    engine = make_engine("large")
    spec = GenerateSpec(12, (), SamplingParams(temperature=0.9, top_p=0.9, seed=7))
    a = step(engine, session_id="a", generate=spec)
    b = step(engine, session_id="b", generate=spec)
    c = step(engine, session_id="c", generate=GenerateSpec(12, (), SamplingParams(0.9, 0.9, seed=8)))
    assert a.finish_reason == "length" and a.generated_tokens == 12
    assert a.token_ids == b.token_ids != c.token_ids
    assert a.decode_s > 0 and a.prefill_s > 0 and a.queue_s >= 0


def test_different_tokenizers_and_templates(make_engine: Any) -> None:
    small, large = make_engine("small"), make_engine("large")
    request = StepRequest("x", MESSAGES, transcript="So 6 x 7 = 42", generate=greedy(4))
    small_text, _ = render_prompt(small.tokenizer, request, "<think>", "</think>")
    large_text, _ = render_prompt(large.tokenizer, request, "<think>", "</think>")
    assert small_text.startswith("<|im_start|>user") and large_text.startswith("<|begin|><|User|>")
    assert small_text.endswith("<think>\nSo 6 x 7 = 42") and large_text.endswith("<think>\nSo 6 x 7 = 42")
    assert len(small.tokenizer) != len(large.tokenizer)
    assert step(small, session_id="s", transcript=request.transcript, generate=greedy(4)).generated_tokens == 4
    assert step(large, session_id="l", transcript=request.transcript, generate=greedy(4)).generated_tokens == 4


def test_prompt_too_long_is_a_clear_error_and_the_engine_keeps_serving(make_engine: Any) -> None:
    engine = make_engine("small", max_context=64)
    with pytest.raises(PromptTooLongError, match="context of 64"):
        step(engine, session_id="long", prompt="x" * 200, generate=greedy(4))
    assert "long" not in engine.sessions
    assert step(engine, session_id="ok", prompt="hi", generate=greedy(4)).generated_tokens == 4


def test_a_huge_prompt_is_refused_before_it_is_rendered_or_tokenized(make_engine: Any) -> None:
    engine = make_engine("small", max_context=64)
    encode = engine.tokenizer.encode
    calls: list[int] = []
    engine.tokenizer.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    huge = "x" * (engine.max_text_chars + 1)
    with pytest.raises(PromptTooLongError, match=r"characters; small has a context of 64 tokens"):
        step(engine, session_id="huge", messages=({"role": "user", "content": huge},), generate=greedy(4))
    assert calls == [] and "huge" not in engine.sessions and engine.queued == 0
    # The bound is safe: no vocabulary entry is longer than the per-token characters it assumes.
    assert engine.max_text_chars >= 64 * max(len(t) for t in engine.tokenizer.get_vocab())


@pytest.mark.parametrize("policy", ["small", "entropy"])
def test_thinking_that_fills_the_context_ends_in_an_answer_not_an_error(make_engine: Any, policy: str) -> None:
    # The tiny models never close their thinking: with a prompt near the small model's context
    # (1024 tokens), the thinking fills it within a few steps.
    small, large = make_engine("small"), make_engine("large")
    params = PARAMS.replace(step_max_tokens=12, thinking_budget=5000, answer_max_tokens=8)
    messages = [{"role": "user", "content": "a" * 990}]
    result = asyncio.run(Collaborator(small, large, params).run(messages, policy=policy, threshold=3.2))
    assert result.stop_reason == "context"
    assert result.steps[-1].context_tokens + result.steps[-1].tokens <= small.max_context
    if policy == "small":
        # The small model answers, and its context is full: an empty answer cut by length.
        assert result.answer == "" and result.answer_record.finish_reason == "length"
    else:
        # The large model (BPE, fewer tokens for the same text) has room to answer.
        assert result.answer_record.tokens > 0 and result.answer_record.model == "large"


def test_generation_is_capped_by_the_context(make_engine: Any) -> None:
    engine = make_engine("small", max_context=40)
    result = step(engine, session_id="s", prompt="hello", generate=greedy(500))
    assert result.finish_reason == "length"
    assert result.context_tokens + result.generated_tokens == 40


def test_messages_need_a_chat_template(make_engine: Any) -> None:
    engine = make_engine("small")
    engine.tokenizer.chat_template = None
    with pytest.raises(EngineError, match="no chat template"):
        step(engine, session_id="s", generate=greedy(2))


def test_sessions_are_bounded_and_released(make_engine: Any) -> None:
    engine = make_engine("small", max_sessions=2)
    for sid in ("a", "b", "c"):
        step(engine, session_id=sid, prompt=f"prompt {sid}", generate=greedy(3))
    assert "a" not in engine.sessions and "b" in engine.sessions and "c" in engine.sessions
    asyncio.run(engine.release("b"))
    step(engine, session_id="c", prompt="prompt c", generate=greedy(1))  # the loop applies releases
    assert "b" not in engine.sessions


def test_cancelled_request_frees_its_session(make_engine: Any) -> None:
    engine = make_engine("large")

    async def cancel_then_serve() -> StepResult:
        task = asyncio.ensure_future(engine.step(StepRequest("s", MESSAGES, generate=greedy(900))))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await engine.step(StepRequest("s", MESSAGES, generate=greedy(3)))

    result = asyncio.run(cancel_then_serve())
    assert result.generated_tokens == 3
    assert not engine.sessions.peek("s").busy
    assert engine.scheduler.running == []


def test_concurrent_sessions_are_all_served(make_engine: Any) -> None:
    engine = make_engine("small", max_running=2)

    async def many() -> list[StepResult]:
        requests = [StepRequest(f"s{i}", prompt=f"question {i}", generate=greedy(6)) for i in range(5)]
        return await asyncio.gather(*(engine.step(r) for r in requests))

    results = asyncio.run(many())
    alone = step(engine, session_id="alone", prompt="question 3", generate=greedy(6))
    assert [r.generated_tokens for r in results] == [6] * 5
    assert results[3].token_ids == alone.token_ids  # interleaving does not change outputs


def test_engine_survives_a_caller_whose_event_loop_is_gone(make_engine: Any) -> None:
    engine = make_engine("large")
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(engine.step(StepRequest("gone", MESSAGES, generate=greedy(900))), 0.01))
    # The worker thread must still serve the next caller (on a new loop).
    assert step(engine, session_id="next", generate=greedy(3)).generated_tokens == 3
    assert engine._thread is not None and engine._thread.is_alive()


def test_length_cut_leaves_out_an_incomplete_character(make_engine: Any) -> None:
    engine = make_engine("small")
    text, reason = cut_step_text(engine.tokenizer, "x \ufffd", [1, 2, 3], "length", (" ",), "</think>", False)
    assert (text, reason) == ("x ", "length")

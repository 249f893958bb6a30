"""The HF engine's post-step signals: each generated token's untempered entropy and sampled
log-probability from the forwards that wrote the step (checked against a plain teacher-forced
forward), computed only when asked, alone or in a batch; and a glimpse's probe probability."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch

from glimp_ray.engine.text import render_prompt
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult

MESSAGES = ({"role": "user", "content": "What is 6 times 7?"},)
TOL = {"rel": 1e-3, "abs": 1e-4}  # float32 forwards on any CPU (tests/numeric.py)


def request(session: str, signals: bool, temperature: float = 0.0, seed: int | None = None) -> StepRequest:
    spec = GenerateSpec(12, (), SamplingParams(temperature=temperature, seed=seed), signals=signals)
    return StepRequest(session, MESSAGES, generate=spec)


def teacher_forced(engine: Any, generated: list[int]) -> tuple[list[float], list[float]]:
    """Each generated position's entropy and its token's log-probability, from one plain forward
    of the prompt and the generated tokens."""
    text, _ = render_prompt(engine.tokenizer, request("p", False), "<think>", "</think>")
    prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    chosen = log_probs.gather(-1, torch.tensor(generated).unsqueeze(-1)).squeeze(-1)
    return entropy.tolist(), chosen.tolist()


def test_step_signals_match_a_teacher_forced_forward(make_engine: Any) -> None:
    engine = make_engine("small")
    result: StepResult = asyncio.run(engine.step(request("a", True)))
    signals = result.step_signals
    assert signals is not None and signals.tokens == result.generated_tokens == len(result.token_ids) > 1
    entropies, logprobs = teacher_forced(engine, result.token_ids)
    assert signals.mean_entropy == pytest.approx(sum(entropies) / len(entropies), **TOL)
    assert signals.mean_logprob == pytest.approx(sum(logprobs) / len(logprobs), **TOL)
    assert signals.min_logprob == pytest.approx(min(logprobs), **TOL)
    assert signals.perplexity == pytest.approx(math.exp(-signals.mean_logprob))
    assert 0 < signals.min_prob <= 1


def test_signals_are_computed_only_when_asked_and_do_not_change_the_step(make_engine: Any) -> None:
    engine = make_engine("small")
    plain = asyncio.run(engine.step(request("p", False, temperature=1.0, seed=7)))
    asked = asyncio.run(engine.step(request("q", True, temperature=1.0, seed=7)))
    assert plain.step_signals is None
    assert asked.step_signals is not None and asked.token_ids == plain.token_ids  # same draws


def test_batched_signals_are_each_requests_own(make_engine: Any) -> None:
    """Requests decoding together, some asking for signals: each gets what it gets alone."""
    engine = make_engine("small")
    alone = [asyncio.run(engine.step(request(f"alone-{i}", True, 1.0, seed=i))) for i in range(3)]

    async def together() -> list[StepResult]:
        calls = [request(f"b-{i}", i != 1, 1.0, seed=i) for i in range(3)]
        return list(await asyncio.gather(*(engine.step(c) for c in calls)))

    batched = asyncio.run(together())
    assert batched[1].step_signals is None
    for i in (0, 2):
        a, b = alone[i].step_signals, batched[i].step_signals
        assert a is not None and b is not None and b.tokens == a.tokens
        assert b.mean_logprob == pytest.approx(a.mean_logprob, **TOL)
        assert b.mean_entropy == pytest.approx(a.mean_entropy, **TOL)


def test_a_glimpse_probe_is_the_probability_of_the_strings_first_tokens(make_engine: Any) -> None:
    engine = make_engine("large")
    probe = ("The", " the", "The")  # a repeated string counts once
    glimpse = GlimpseSpec(probe=probe)
    result = asyncio.run(engine.step(StepRequest("g", MESSAGES, glimpse=glimpse)))
    text, _ = render_prompt(engine.tokenizer, StepRequest("g", MESSAGES, glimpse=glimpse), "<think>", "</think>")
    ids = torch.tensor([engine.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        probs = torch.softmax(engine.model(input_ids=ids).logits[0, -1].double(), dim=-1)
    first = {engine.tokenizer.encode(s, add_special_tokens=False)[0] for s in probe}
    assert result.probe_prob == pytest.approx(float(sum(probs[i] for i in first)), **TOL)
    no_probe = asyncio.run(engine.step(StepRequest("h", MESSAGES, glimpse=GlimpseSpec())))
    assert no_probe.probe_prob is None

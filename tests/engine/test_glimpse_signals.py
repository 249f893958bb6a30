"""The HF engine's glimpse signals (entropy, top-1 and top-2 probability) from the forward that
writes the step, its fused routing on each signal, and broken logits failing the request."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch

from glimp_ray.engine.base import NonFiniteSignalError
from glimp_ray.engine.text import render_prompt
from glimp_ray.entropy import glimpse_entropy
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult
from tests.numeric import LOGITS_RTOL, entropy_approx

MESSAGES = ({"role": "user", "content": "What is 6 times 7?"},)
GREEDY = SamplingParams(temperature=0)


def step(engine: Any, **kwargs: Any) -> StepResult:
    kwargs.setdefault("messages", MESSAGES)
    return asyncio.run(engine.step(StepRequest(**kwargs)))


def plain_logits(engine: Any) -> torch.Tensor:
    """The first token's logits from a plain forward of the rendered prompt."""
    text, _ = render_prompt(engine.tokenizer, StepRequest("p", MESSAGES, glimpse=GlimpseSpec()), "<think>", "</think>")
    ids = torch.tensor([engine.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        return engine.model(input_ids=ids).logits[0, -1]


def test_glimpse_probabilities_are_the_softmax_top_two(make_engine: Any) -> None:
    """Top-1 and top-2 probabilities of the untempered softmax over the whole vocabulary, for
    both entropy kinds, glimpse alone or fused with the step (the same forward: one prefill)."""
    engine = make_engine("small")
    probs = torch.softmax(plain_logits(engine).double(), dim=-1)
    top1, top2 = torch.topk(probs, 2).values.tolist()
    assert top1 > top2 > 0
    for i, spec in enumerate([GlimpseSpec("full"), GlimpseSpec("topk", top_k=5)]):
        alone = step(engine, session_id=f"alone{i}", glimpse=spec)
        fused = step(engine, session_id=f"fused{i}", glimpse=spec, generate=GenerateSpec(4, (), GREEDY))
        for result in (alone, fused):
            assert result.top1_prob == pytest.approx(top1, rel=LOGITS_RTOL)
            assert result.top2_prob == pytest.approx(top2, rel=LOGITS_RTOL)
            glimpse = result.glimpse
            assert glimpse is not None and glimpse.margin == pytest.approx(top1 - top2, rel=LOGITS_RTOL)
        assert fused.generated_tokens == 4 and fused.prefill_tokens == alone.prefill_tokens


@pytest.mark.parametrize("signal", ["top1", "margin"])
def test_a_fused_glimpse_routes_on_the_requested_signal(make_engine: Any, signal: str) -> None:
    """τ a little above the step's signal routes it away (probabilities below τ go large), τ a
    little below keeps it; an entropy threshold nobody reaches does not route it on its own."""
    engine = make_engine("small")
    measured = step(engine, session_id="m", glimpse=GlimpseSpec()).glimpse
    assert measured is not None
    value = measured.value(signal)  # type: ignore[arg-type]
    generate = GenerateSpec(4, (), GREEDY)
    above = step(engine, session_id="a", glimpse=GlimpseSpec(threshold=value * 1.05, signal=signal), generate=generate)  # type: ignore[arg-type]
    below = step(engine, session_id="b", glimpse=GlimpseSpec(threshold=value * 0.95, signal=signal), generate=generate)  # type: ignore[arg-type]
    assert above.routed and above.token_ids == [] and above.top1_prob == pytest.approx(measured.top1_prob, rel=1e-6)
    assert not below.routed and below.generated_tokens == 4


def _patch_logits(engine: Any, edit: Any) -> Any:
    """Edit every forward's output logits (a masked vocabulary, a broken model)."""

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        edit(output)
        return output

    return engine.model.lm_head.register_forward_hook(hook)


def test_masked_logits_give_the_entropy_of_the_rest(make_engine: Any) -> None:
    """A vocabulary masked with -inf (e.g. a grammar) leaves a finite entropy: that of the finite
    logits; the step is written from them."""
    engine = make_engine("small")
    logits = plain_logits(engine)
    masked = torch.zeros_like(logits, dtype=torch.bool)
    masked[: logits.shape[0] // 2] = True
    masked[int(logits.argmax())] = False  # the greedy token stays allowed
    _patch_logits(engine, lambda out: out.masked_fill_(masked, -math.inf))
    expected = logits.clone()
    expected[masked] = -math.inf
    result = step(engine, session_id="masked", glimpse=GlimpseSpec(), generate=GenerateSpec(3, (), GREEDY))
    assert result.entropy is not None and math.isfinite(result.entropy)
    assert result.entropy == entropy_approx(float(glimpse_entropy(expected[~masked], "full")))
    assert result.entropy < glimpse_entropy(logits, "full")  # fewer tokens left to spread over
    assert result.generated_tokens == 3


@pytest.mark.parametrize("broken", [math.nan, math.inf])
def test_a_nan_glimpse_fails_the_request_and_the_engine_serves_on(make_engine: Any, broken: float) -> None:
    engine = make_engine("small")
    handle = _patch_logits(engine, lambda out: out[..., 3].fill_(broken))
    with pytest.raises(NonFiniteSignalError, match="entropy"):
        step(engine, session_id="nan", glimpse=GlimpseSpec(threshold=1.0), generate=GenerateSpec(3, (), GREEDY))
    handle.remove()
    ok = step(engine, session_id="nan", glimpse=GlimpseSpec(threshold=1e9), generate=GenerateSpec(3, (), GREEDY))
    assert ok.generated_tokens == 3 and ok.entropy is not None and math.isfinite(ok.entropy)


def test_top1_routing_is_alike_streamed_per_step_and_in_paper_mode(make_engine: Any) -> None:
    """The top1 policy on the HF pair under greedy decoding: the engine's own runs of easy steps,
    one fused call per step and the paper mode's separate glimpse route every step alike and
    write the same text (τ midway between two measured top-1 probabilities)."""
    from glimp_ray.collab import Collaborator, CollabParams
    from glimp_ray.engine.recording import RecordingClient
    from tests.numeric import midpoint_threshold

    params = CollabParams(temperature=0, delimiter=" ", step_max_tokens=24, thinking_budget=120, answer_max_tokens=8)
    probe = RecordingClient(make_engine("small"))
    asyncio.run(Collaborator(probe, make_engine("large"), params).run(MESSAGES, policy="small"))
    top1s = [r.top1_prob for r in probe.results if r.top1_prob is not None]  # the answer has no glimpse
    tau = midpoint_threshold(top1s)  # type: ignore[arg-type]
    small, large = make_engine("small"), make_engine("large")
    runs = {
        "streamed": dict(mode="fused"),
        "per_step": dict(mode="fused", streaming_glimpse=False),
        "paper": dict(mode="paper"),
    }
    results = {
        name: asyncio.run(Collaborator(small, large, params).run(MESSAGES, policy="top1", threshold=tau, **kw))
        for name, kw in runs.items()
    }
    steps = {name: [(s.model, s.text) for s in r.steps] for name, r in results.items()}
    assert {model for model, _ in steps["streamed"]} == {"small", "large"}  # both routes taken
    assert steps["streamed"] == steps["per_step"] == steps["paper"]
    assert all(s.threshold == tau for s in results["streamed"].steps)
    assert len({r.answer for r in results.values()}) == 1

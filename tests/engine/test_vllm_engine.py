"""The vLLM engine on vLLM's CPU build, against the HF engine on the same tiny models.

Runs where vLLM is installed (CI's second virtualenv: ``make test-vllm``); skipped elsewhere.
vLLM's CPU attention needs a head size of at least 32, so the tiny pair is widened to it.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from glimp_ray.collab import Collaborator, CollabParams  # noqa: E402
from glimp_ray.engine.base import PromptTooLongError  # noqa: E402
from glimp_ray.engine.hf import HFEngine  # noqa: E402
from glimp_ray.engine.vllm import VLLMEngine  # noqa: E402
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult  # noqa: E402
from tests.numeric import entropy_approx  # noqa: E402

MESSAGES = ({"role": "user", "content": "What is 6 times 7?"},)
GREEDY = SamplingParams(temperature=0)
PARAMS = CollabParams(
    temperature=0, entropy="topk", delimiter=" ", step_max_tokens=12, thinking_budget=60, answer_max_tokens=8
)
# float32 on both engines; vLLM's CPU kernels sum in another order than torch's eager attention.
ENTROPY_TOL = {"rel": 1e-3, "abs": 1e-3}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from glimp_ray.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny-vllm"), seed=0, head_dim=32)


@pytest.fixture(scope="module")
def engines(pair: tuple[Path, Path]) -> Iterator[dict[str, Any]]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    opts = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 8}
    made = {
        "small": VLLMEngine.load(str(pair[0]), **opts),
        "large": VLLMEngine.load(str(pair[1]), **opts),
        "hf_small": HFEngine.load(str(pair[0])),
        "hf_large": HFEngine.load(str(pair[1])),
        "loop": loop,
    }
    yield made
    for name in ("small", "large", "hf_small", "hf_large"):
        made[name].close()
    loop.run_until_complete(asyncio.sleep(0.2))  # vLLM's cancelled output handlers finish on the loop


def run(engines: dict[str, Any], coro: Any) -> Any:
    return engines["loop"].run_until_complete(coro)


def step(engines: dict[str, Any], engine: str, **kwargs: Any) -> StepResult:
    kwargs.setdefault("messages", MESSAGES)
    return run(engines, engines[engine].step(StepRequest(**kwargs)))


def test_glimpse_entropy_equals_the_hf_engines_top_k_entropy(engines: dict[str, Any]) -> None:
    for i, content in enumerate(["What is 6 times 7?", "Add 3 to 40.", "x"]):
        messages = ({"role": "user", "content": content},)
        v = step(engines, "small", session_id=f"v{i}", messages=messages, glimpse=GlimpseSpec("topk", 20))
        h = step(engines, "hf_small", session_id=f"h{i}", messages=messages, glimpse=GlimpseSpec("topk", 20))
        assert v.finish_reason == "glimpse" and v.token_ids == []
        assert v.entropy == pytest.approx(h.entropy, **ENTROPY_TOL)
        # The top-1 and top-2 probabilities (the top1 and margin policies), over the whole vocabulary.
        assert (v.top1_prob, v.top2_prob) == pytest.approx((h.top1_prob, h.top2_prob), **ENTROPY_TOL)


def test_a_fused_glimpse_routes_on_the_top1_probability(engines: dict[str, Any]) -> None:
    """τ a little above the first token's probability routes the step (probabilities below τ go
    large); a little below, the step is written."""
    top1 = step(engines, "small", session_id="t", glimpse=GlimpseSpec("topk", 20)).top1_prob
    assert top1 is not None
    generate = GenerateSpec(4, (), GREEDY)
    above = step(
        engines, "small", session_id="ta", glimpse=GlimpseSpec("topk", 20, top1 * 1.05, "top1"), generate=generate
    )
    below = step(
        engines, "small", session_id="tb", glimpse=GlimpseSpec("topk", 20, top1 * 0.95, "top1"), generate=generate
    )
    assert above.routed and above.token_ids == []
    assert not below.routed and below.generated_tokens == 4


def test_the_models_sampling_defaults_apply_unless_the_request_sets_a_value(
    engines: dict[str, Any], pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """A model whose generation_config.json sets top-k 1 (as vLLM's OpenAI server would apply it):
    unset sampling gives the greedy text whatever the seed; the request's own top-k wins."""
    import json
    import shutil

    model = tmp_path / "small-gen"
    shutil.copytree(pair[0], model)
    config_path = model / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config_path.write_text(json.dumps({**config, "temperature": 1.0, "top_k": 1, "do_sample": True}))
    opts = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 4}
    engine = VLLMEngine.load(str(model), **opts)
    try:
        assert engine.sampling_defaults == {"temperature": 1.0, "top_k": 1.0}
        assert engines["small"].sampling_defaults == {}

        def text(session: str, sampling: SamplingParams) -> str:
            request = StepRequest(session, MESSAGES, generate=GenerateSpec(16, (), sampling))
            return str(run(engines, engine.step(request)).text)

        greedy = text("g", GREEDY)
        assert [text(f"d{seed}", SamplingParams(seed=seed)) for seed in range(3)] == [greedy] * 3
        assert any(text(f"f{seed}", SamplingParams(seed=seed, top_k=0)) != greedy for seed in range(3))
    finally:
        engine.close()


def test_fused_and_paper_modes_give_the_same_greedy_output(engines: dict[str, Any]) -> None:
    small, large = engines["small"], engines["large"]
    probe = run(engines, Collaborator(small, large, PARAMS).run(list(MESSAGES), policy="small"))
    entropies = sorted(s.entropy for s in probe.steps)
    tau = (entropies[len(entropies) // 2 - 1] + entropies[len(entropies) // 2]) / 2
    fused = run(engines, Collaborator(small, large, PARAMS).run(list(MESSAGES), threshold=tau, mode="fused"))
    paper = run(engines, Collaborator(small, large, PARAMS).run(list(MESSAGES), threshold=tau, mode="paper"))
    assert {s.model for s in fused.steps} == {"small", "large"}  # both routes taken
    assert [s.model for s in fused.steps] == [s.model for s in paper.steps]
    assert fused.reasoning == paper.reasoning and fused.answer == paper.answer
    # Fused runs of easy steps (streaming glimpse, the default) against one call per step: the
    # same output from fewer vLLM requests (a run's steps share one where the tokens allow).
    before = small.requests
    again = run(engines, Collaborator(small, large, PARAMS).run(list(MESSAGES), threshold=tau, mode="fused"))
    streamed_requests, before = small.requests - before, small.requests
    per_step = run(
        engines,
        Collaborator(small, large, PARAMS).run(list(MESSAGES), threshold=tau, mode="fused", streaming_glimpse=False),
    )
    assert [(s.model, s.text, s.tokens) for s in fused.steps] == [(s.model, s.text, s.tokens) for s in per_step.steps]
    assert [(s.model, s.text, s.tokens) for s in again.steps] == [(s.model, s.text, s.tokens) for s in fused.steps]
    assert [s.entropy for s in fused.steps] == [pytest.approx(s.entropy, **ENTROPY_TOL) for s in per_step.steps]
    assert fused.answer == per_step.answer
    assert streamed_requests < small.requests - before


def test_a_routed_glimpse_generates_nothing(engines: dict[str, Any]) -> None:
    routed = step(
        engines,
        "small",
        session_id="r",
        glimpse=GlimpseSpec("topk", 20, threshold=-1.0),
        generate=GenerateSpec(8, (" ",), GREEDY),
    )
    assert routed.routed and routed.finish_reason == "routed" and routed.token_ids == [] and routed.text == ""
    kept = step(
        engines,
        "small",
        session_id="r",
        glimpse=GlimpseSpec("topk", 20, threshold=None),
        generate=GenerateSpec(8, (" ",), GREEDY),
    )
    assert not kept.routed and kept.entropy == entropy_approx(routed.entropy)


def test_steps_stop_at_the_delimiter_and_the_think_end_marker(engines: dict[str, Any]) -> None:
    free = step(engines, "large", session_id="free", generate=GenerateSpec(60, (), GREEDY))
    text = free.text
    cut = next(i for i, c in enumerate(text) if i > 0 and not c.isspace())
    stop = text[cut : cut + 2]
    stopped = step(engines, "large", session_id="stop", generate=GenerateSpec(60, (stop,), GREEDY))
    assert stopped.finish_reason == "delimiter"
    assert stopped.text.endswith(stop) and stopped.text == text[: text.index(stop) + len(stop)]
    capped = step(engines, "large", session_id="cap", generate=GenerateSpec(3, (), GREEDY))
    assert capped.finish_reason == "length" and capped.generated_tokens == 3


def test_seeds_make_sampling_reproducible(engines: dict[str, Any]) -> None:
    def sample(seed: int, session: str) -> list[int]:
        spec = GenerateSpec(16, (), SamplingParams(temperature=1.0, top_p=1.0, seed=seed))
        return step(engines, "small", session_id=session, generate=spec).token_ids

    assert sample(7, "s1") == sample(7, "s2")
    assert sample(7, "s3") != sample(8, "s4")


def test_a_cancelled_call_is_aborted_and_the_engine_goes_on(engines: dict[str, Any]) -> None:
    small = engines["small"]

    async def cancel_one() -> None:
        task = asyncio.ensure_future(small.step(StepRequest("gone", MESSAGES, generate=GenerateSpec(900, (), GREEDY))))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(engines, cancel_one())
    assert small.queued == 0
    assert step(engines, "small", session_id="next", generate=GenerateSpec(3, (), GREEDY)).generated_tokens == 3


def test_a_run_closed_midway_is_aborted_and_the_engine_goes_on(engines: dict[str, Any]) -> None:
    from glimp_ray.params import PRESET_RULES
    from glimp_ray.step_run import StepRun

    small = engines["small"]
    spec = StepRun(0, 0, 10_000, 12, " ", PRESET_RULES["glimp"], 0.0, 1.0, None, None)
    request = StepRequest("run-gone", MESSAGES, glimpse=GlimpseSpec("topk", 20, threshold=1e9))  # all easy

    async def take_two() -> list[StepResult]:
        steps = small.run_steps(request, spec)
        got = [await anext(steps), await anext(steps)]
        await steps.aclose()
        return got

    got = run(engines, take_two())
    assert len(got) == 2 and not any(r.routed for r in got)
    assert small.queued == 0
    assert step(engines, "small", session_id="after", generate=GenerateSpec(3, (), GREEDY)).generated_tokens == 3


def test_a_prompt_too_long_is_the_same_error(engines: dict[str, Any]) -> None:
    with pytest.raises(PromptTooLongError, match="context of 1024"):
        step(
            engines,
            "small",
            session_id="long",
            messages=({"role": "user", "content": "y" * 1100},),
            generate=GenerateSpec(4, (), GREEDY),
        )
    with pytest.raises(PromptTooLongError, match="characters"):
        step(
            engines,
            "small",
            session_id="huge",
            messages=({"role": "user", "content": "y" * 10**6},),
            generate=GenerateSpec(4, (), GREEDY),
        )
    assert step(engines, "small", session_id="ok", generate=GenerateSpec(2, (), GREEDY)).generated_tokens == 2


def test_a_session_reuses_its_prefix_from_vllms_cache(engines: dict[str, Any]) -> None:
    long = ({"role": "user", "content": "Think about this carefully. " * 12},)
    first = step(engines, "large", session_id="p", messages=long, generate=GenerateSpec(8, (), GREEDY))
    second = step(
        engines, "large", session_id="p", messages=long, transcript=first.text, generate=GenerateSpec(8, (), GREEDY)
    )
    assert second.reused_tokens > 0 and second.reused_tokens + second.prefill_tokens == second.context_tokens
    # Its own generated tokens were kept, not re-tokenized: the context grew by exactly them.
    assert second.context_tokens == first.context_tokens + first.generated_tokens


def test_step_signals_on_vllm_match_the_hf_engines_log_probabilities(engines: dict[str, Any]) -> None:
    """The sampled tokens' log-probabilities are over the whole vocabulary on both engines (the
    same greedy tokens, the same numbers); vLLM's token entropy is the top-20's, renormalised."""
    spec = GenerateSpec(10, (), GREEDY, signals=True)
    v = step(engines, "small", session_id="sig-v", generate=spec)
    h = step(engines, "hf_small", session_id="sig-h", generate=spec)
    assert v.token_ids == h.token_ids and v.step_signals is not None and h.step_signals is not None
    assert v.step_signals.tokens == h.step_signals.tokens == len(v.token_ids)
    assert v.step_signals.mean_logprob == pytest.approx(h.step_signals.mean_logprob, **ENTROPY_TOL)
    assert v.step_signals.min_logprob == pytest.approx(h.step_signals.min_logprob, **ENTROPY_TOL)
    assert 0 <= v.step_signals.mean_entropy <= math.log(20) + 1e-9
    assert step(engines, "small", session_id="sig-n", generate=GenerateSpec(4, (), GREEDY)).step_signals is None


def test_a_glimpse_probe_on_vllm_counts_the_probe_tokens_in_its_top_k(engines: dict[str, Any]) -> None:
    h = step(engines, "hf_large", session_id="probe-h", generate=GenerateSpec(1, (), GREEDY))
    top = engines["hf_large"].tokenizer.decode(h.token_ids)  # the most likely first token: in any top-k
    glimpse = GlimpseSpec("topk", 20, probe=(top,))
    v = step(engines, "large", session_id="probe-v", glimpse=glimpse)
    hp = step(engines, "hf_large", session_id="probe-hp", glimpse=glimpse)
    assert v.probe_prob is not None and v.probe_prob == pytest.approx(hp.probe_prob, **ENTROPY_TOL)
    assert v.probe_prob == pytest.approx(v.top1_prob, **ENTROPY_TOL)


def test_verify_rewrites_reuse_vllms_prefix_cache(engines: dict[str, Any]) -> None:
    """Every step drafted on the small pool, checked and rewritten on the large one (τ above any
    probability): the rewrite's context is a prefix of the check's, found in vLLM's prefix cache
    (whole blocks of it: the long prompt fills at least one)."""
    long = [{"role": "user", "content": "Think about this carefully. " * 12}]
    collab = Collaborator(engines["small"], engines["large"], PARAMS.replace(policy="verify", threshold=2.0))
    result = run(engines, collab.run(messages=long))
    assert result.steps and all(s.rewritten and s.model == "large" for s in result.steps)
    for s in result.steps:
        assert s.check_prefill_tokens > 0 and s.draft_tokens > 0
        assert s.reused_tokens > 0 and s.reused_tokens + s.prefill_tokens == s.context_tokens
        assert s.prefill_tokens / s.context_tokens < 1

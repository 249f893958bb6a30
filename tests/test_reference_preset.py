"""The reference preset replays the paper's reference loop (github.com/Zengwh02/GlimpRouter,
src/glimp_router.py) call by call on scripted engines; the default keeps this project's rules."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from glimp_ray.cli import main
from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.config import ConfigError, RoutingConfig, parse_config
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep
from glimp_ray.engine.text import render_prompt
from glimp_ray.types import StepRequest, StepResult

PROMPT = "Q:"
TAU = 1.0
JUST_BELOW_TAU = math.nextafter(TAU, -math.inf)  # an engine routes on H > this, i.e. H >= τ
LIMITS = {"threshold": TAU, "step_max_tokens": 6, "thinking_budget": 16, "answer_max_tokens": 8}

Call = tuple[str, str, Any, int | None, bool]


class Logged:
    """A pool that logs every call, in order across both pools."""

    def __init__(self, pool: str, engine: ScriptedEngine, log: list[tuple[str, StepRequest]]):
        self.pool, self.engine, self.log = pool, engine, log

    async def step(self, request: StepRequest) -> StepResult:
        self.log.append((self.pool, request))
        return await self.engine.step(request)

    async def release(self, session_id: str) -> None:
        await self.engine.release(session_id)


def replay(small: ScriptedEngine, large: ScriptedEngine, **params: Any) -> tuple[Any, list[Call], str]:
    """Run one request; returns the result, each call as (pool, transcript, glimpse as (entropy,
    top_k, threshold), max_tokens, close_thinking), and the answer call's text as an engine renders it."""
    log: list[tuple[str, StepRequest]] = []
    collab = Collaborator(Logged("small", small, log), Logged("large", large, log))
    result = asyncio.run(collab.run(prompt=PROMPT, **{**LIMITS, **params}))
    calls = [
        (
            pool,
            r.transcript,
            None if r.glimpse is None else (r.glimpse.entropy, r.glimpse.top_k, r.glimpse.threshold),
            None if r.generate is None else r.generate.max_tokens,
            r.close_thinking,
        )
        for pool, r in log
    ]
    answer_text, _ = render_prompt(None, log[-1][1], "<think>", "</think>")  # prompts need no tokenizer
    return result, calls, answer_text


def script_a() -> tuple[ScriptedEngine, ScriptedEngine]:
    """Step 2 repeats step 1; step 3's entropy is exactly τ; the large model's step 3 is cut by
    length; step 4 starts with 2 tokens of budget left."""
    small = ScriptedEngine(
        "small",
        [ScriptedStep("ab\n\n", 0.5), ScriptedStep("ab\n\n", 0.5), ScriptedStep("ss\n\n", TAU)]
        + [ScriptedStep("cdef\n\n", 0.5)],
    )
    large = ScriptedEngine("large", [ScriptedStep("x\n\n")] * 2 + [ScriptedStep("LLLLLLLL\n\n")], answer="42")
    return small, large


def test_the_reference_loop_replayed_step_by_step() -> None:
    result, calls, answer_text = replay(*script_a(), preset="reference")
    glimpse = ("topk", 20, JUST_BELOW_TAU)
    assert calls == [
        ("small", "", glimpse, 6, False),
        ("small", "ab\n\n", glimpse, 6, False),  # the 2nd step repeats the 1st: no stop before the 3rd
        ("small", "ab\n\nab\n\n", glimpse, 6, False),  # H == τ: routed
        ("large", "ab\n\nab\n\n", None, 6, False),  # cut at 6 tokens ...
        ("small", "ab\n\nab\n\nLLLLLL\n\n", glimpse, 6, False),  # ... joined with the delimiter; 6 > budget left
        ("large", "ab\n\nab\n\nLLLLLL\n\ncdef\n", None, 8, True),  # the steps joined, then a newline
    ]
    assert answer_text == "Q:<think>\nab\n\nab\n\nLLLLLL\n\ncdef\n</think>\n\n"
    assert [s.model for s in result.steps] == ["small", "small", "large", "small"]
    assert [s.entropy for s in result.steps] == [0.5, 0.5, TAU, 0.5]
    assert [s.text for s in result.steps] == ["ab\n\n", "ab\n\n", "LLLLLL\n\n", "cdef\n\n"]
    assert [s.tokens for s in result.steps] == [4, 4, 6, 6]
    assert [s.finish_reason for s in result.steps] == ["delimiter", "delimiter", "length", "delimiter"]
    assert result.stop_reason == "budget" and result.thinking_tokens == 20  # past the budget of 16
    assert result.reasoning == "ab\n\nab\n\nLLLLLL\n\ncdef" and result.answer == "42"


def test_the_default_stops_at_a_repeated_2nd_step_and_closes_after_the_transcript() -> None:
    result, calls, answer_text = replay(*script_a())
    glimpse = ("full", 20, TAU)
    assert calls == [
        ("small", "", glimpse, 6, False),
        ("small", "ab\n\n", glimpse, 6, False),
        ("large", "ab\n\nab\n\n", None, 8, True),
    ]
    assert result.stop_reason == "repeat"
    assert answer_text == "Q:<think>\nab\n\nab\n\n</think>\n\n"


def test_the_reference_repeat_rule_stops_from_the_3rd_step() -> None:
    small = ScriptedEngine("small", [ScriptedStep("ab\n\n", 0.5), ScriptedStep("cd\n\n", 0.5)])
    large = ScriptedEngine("large", [ScriptedStep("x\n\n")], answer="42")
    result, calls, answer_text = replay(small, large, preset="reference", thinking_budget=100)
    glimpse = ("topk", 20, JUST_BELOW_TAU)
    assert calls == [
        ("small", "", glimpse, 6, False),
        ("small", "ab\n\n", glimpse, 6, False),
        ("small", "ab\n\ncd\n\n", glimpse, 6, False),  # the 3rd step repeats the 2nd: stop
        ("large", "ab\n\ncd\n\ncd\n", None, 8, True),
    ]
    assert result.stop_reason == "repeat"
    assert answer_text == "Q:<think>\nab\n\ncd\n\ncd\n</think>\n\n"


def test_the_default_keeps_a_step_at_tau_small_joins_a_cut_step_as_written_and_clips_the_last() -> None:
    def script() -> tuple[ScriptedEngine, ScriptedEngine]:
        small = ScriptedEngine(
            "small",
            [ScriptedStep("ab\n\n", 0.5), ScriptedStep("ba\n\n", 0.5), ScriptedStep("SSSSSSSS\n\n", TAU)],
        )
        large = ScriptedEngine("large", [ScriptedStep("LLLLLLLL\n\n")], answer="42")
        return small, large

    result, calls, answer_text = replay(*script())
    glimpse = ("full", 20, TAU)
    assert calls == [
        ("small", "", glimpse, 6, False),
        ("small", "ab\n\n", glimpse, 6, False),
        ("small", "ab\n\nba\n\n", glimpse, 6, False),  # H == τ stays small; cut at 6 tokens
        ("small", "ab\n\nba\n\nSSSSSS", glimpse, 2, False),  # no delimiter added; clipped to the budget left
        ("large", "ab\n\nba\n\nSSSSSSSS", None, 8, True),
    ]
    assert [s.tokens for s in result.steps] == [4, 4, 6, 2] and result.thinking_tokens == 16
    assert answer_text == "Q:<think>\nab\n\nba\n\nSSSSSSSS</think>\n\n"
    reference, _, _ = replay(*script(), preset="reference")
    assert [s.model for s in reference.steps][:3] == ["small", "small", "large"]


def test_the_reference_preset_in_paper_mode_glimpses_separately_and_routes_at_tau() -> None:
    fused, _, _ = replay(*script_a(), preset="reference")
    result, calls, answer_text = replay(*script_a(), preset="reference", mode="paper")
    glimpse = ("topk", 20, None)  # the policy decides, on H >= τ
    assert calls[:4] == [
        ("small", "", glimpse, None, False),
        ("small", "", ("topk", 20, None), 6, False),
        ("small", "ab\n\n", glimpse, None, False),
        ("small", "ab\n\n", ("topk", 20, None), 6, False),
    ]
    assert calls[4:6] == [("small", "ab\n\nab\n\n", glimpse, None, False), ("large", "ab\n\nab\n\n", None, 6, False)]
    assert [s.model for s in result.steps] == [s.model for s in fused.steps]
    assert result.reasoning == fused.reasoning and answer_text.endswith("cdef\n</think>\n\n")


def test_switching_to_the_reference_preset_brings_its_entropy() -> None:
    reference = CollabParams().replace(preset="reference")
    assert (reference.preset, reference.entropy, reference.top_k) == ("reference", "topk", 20)
    assert reference.rules.large_at_threshold and not reference.rules.clip_to_budget
    assert CollabParams(preset="reference", entropy="topk").rules == reference.rules
    # Back to this project's rules: the entropy stays as chosen.
    assert reference.replace(preset="glimp").entropy == "topk"


@pytest.mark.parametrize(
    "build",
    [
        lambda: CollabParams(preset="reference"),  # the dataclass's own default entropy is full
        lambda: CollabParams().replace(preset="reference", entropy="full"),
        lambda: CollabParams().replace(preset="reference", top_k=10),
        lambda: CollabParams().replace(preset="reference").replace(entropy="full"),
    ],
)
def test_the_reference_preset_refuses_another_entropy(build: Any) -> None:
    with pytest.raises(ValueError, match="preset reference glimpses the top-20 entropy"):
        build()


def test_an_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        CollabParams().replace(preset="paper")


MODELS = {"small": {"model": "a"}, "large": {"model": "b"}}


def test_config_preset_reference_sets_the_entropy_and_conflicts_name_the_section() -> None:
    config = parse_config({**MODELS, "routing": {"preset": "reference", "threshold": 0.9}})
    params = config.collab_params()
    assert (params.preset, params.entropy, params.top_k, params.threshold) == ("reference", "topk", 20, 0.9)
    assert parse_config(MODELS).collab_params().preset == "glimp"
    # A vLLM small model needs top-k entropy; the preset gives it.
    vllm = {"small": {"model": "a", "engine": "vllm"}, "large": {"model": "b"}}
    assert parse_config({**vllm, "routing": {"preset": "reference"}}).routing.entropy == "topk"
    with pytest.raises(ConfigError, match=r"routing: .*preset reference glimpses the top-20 entropy"):
        parse_config({**MODELS, "routing": {"preset": "reference", "entropy": "full"}})
    with pytest.raises(ConfigError, match="routing.preset"):
        parse_config({**MODELS, "routing": {"preset": "paper"}})


def test_full_entropy_is_refused_on_a_vllm_small_model_only() -> None:
    assert "vLLM" in (RoutingConfig.entropy_refused("full", "vllm") or "")
    assert RoutingConfig.entropy_refused("topk", "vllm") is None
    assert RoutingConfig.entropy_refused("full", "hf") is None


@pytest.mark.parametrize(
    ("small", "flags", "message"),
    [
        ("{model: nope}", ["--preset", "reference", "--entropy", "full"], "preset reference glimpses"),
        ("{model: nope}", ["--top-k", "0"], "top_k must be >= 1"),
        ("{model: nope, engine: vllm}", ["--entropy", "full"], "--entropy: the small model runs on vLLM"),
    ],
)
def test_cli_routing_flags_are_checked_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small: str, flags: list[str], message: str
) -> None:
    path = tmp_path / "c.yaml"  # models that do not exist: loading one would fail otherwise
    path.write_text(f"small: {small}\nlarge: {{model: nope}}\nrouting: {{entropy: topk}}\n")
    assert main(["generate", "--config", str(path), "hi", *flags]) == 2
    assert message in capsys.readouterr().err


def test_cli_entropy_and_preset_flags_take_known_values_only() -> None:
    for flags in (["--entropy", "partial"], ["--preset", "paper"]):
        with pytest.raises(SystemExit):
            main(["generate", "hi", *flags])

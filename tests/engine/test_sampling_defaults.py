"""A model's generation_config.json sampling defaults, applied by the HF engine as vLLM's OpenAI
server applies them: the request's value wins, then the model's, then the project's."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from glimp_ray.engine.generation_defaults import resolve_sampling, sampling_defaults
from glimp_ray.engine.hf import HFEngine
from glimp_ray.types import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, GenerateSpec, SamplingParams, StepRequest

MESSAGES = ({"role": "user", "content": "What is 6 times 7?"},)


def with_generation_config(model: Path, root: Path, **values: object) -> Path:
    """A copy of ``model`` whose generation_config.json also sets ``values``."""
    copy = root / f"{model.name}-gen"
    shutil.copytree(model, copy)
    path = copy / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**config, **values}))
    return copy


def test_resolution_order() -> None:
    defaults = sampling_defaults({"temperature": 0.7, "top_k": 20, "top_p": None, "eos_token_id": 2})
    assert defaults == {"temperature": 0.7, "top_k": 20}
    resolved = resolve_sampling(SamplingParams(top_k=5, seed=3), defaults)
    assert resolved == SamplingParams(0.7, DEFAULT_TOP_P, 3, 5, 0.0)  # request, model, project
    assert resolve_sampling(SamplingParams(), {}) == SamplingParams(DEFAULT_TEMPERATURE, DEFAULT_TOP_P, None, 0, 0.0)
    assert resolve_sampling(SamplingParams(top_k=0), {"top_k": 20}).top_k == 0  # the request turns it off
    assert resolve_sampling(SamplingParams(), {"top_k": -1}).top_k == 0  # vLLM's "off"
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(min_p=1.5)


def test_the_models_defaults_apply_unless_the_request_sets_a_value(
    tiny_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """The model ships top-k 1 (and temperature 1): a request that leaves sampling unset samples
    the greedy text whatever its seed; one that sets its own top-k (0: off) samples freely."""
    model = with_generation_config(tiny_pair[0], tmp_path, temperature=1.0, top_k=1, do_sample=True)
    engine = HFEngine.load(str(model))
    plain = HFEngine.load(str(tiny_pair[0]))
    try:
        assert engine.sampling_defaults == {"temperature": 1.0, "top_k": 1.0}
        assert plain.sampling_defaults == {}

        def text(which: HFEngine, session: str, sampling: SamplingParams) -> str:
            request = StepRequest(session, MESSAGES, generate=GenerateSpec(16, (), sampling))
            return asyncio.run(which.step(request)).text

        greedy = text(engine, "greedy", SamplingParams(temperature=0))
        defaulted = [text(engine, f"d{seed}", SamplingParams(seed=seed)) for seed in range(3)]
        assert defaulted == [greedy] * 3
        # The request's own top-k wins over the model's: free sampling at temperature 1.
        free = [text(engine, f"f{seed}", SamplingParams(seed=seed, top_k=0)) for seed in range(3)]
        assert any(t != greedy for t in free)
        # The same seeds on the model without defaults: the project's (temperature 0.6, top-p
        # 0.95), which the model with defaults gives when the request sets them.
        assert [text(plain, f"p{s}", SamplingParams(seed=s)) for s in range(3)] == [
            text(engine, f"e{s}", SamplingParams(DEFAULT_TEMPERATURE, DEFAULT_TOP_P, s, 0)) for s in range(3)
        ]
    finally:
        engine.close()
        plain.close()

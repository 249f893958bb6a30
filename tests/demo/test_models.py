"""The shipped demo models load and the large one solves problems of the held-out split."""

from __future__ import annotations

import asyncio

from glimp_ray.collab import Collaborator, CollabParams
from glimp_ray.demo import DEMO_MODELS
from glimp_ray.demo.task import make_split, verify
from glimp_ray.engine.hf import HFEngine


def test_shipped_models_load_and_share_a_tokenizer() -> None:
    small = HFEngine.load(str(DEMO_MODELS / "small"))
    large = HFEngine.load(str(DEMO_MODELS / "large"))
    try:
        assert small.tokenizer.get_vocab() == large.tokenizer.get_vocab()
        small_params = sum(p.numel() for p in small.model.parameters())
        large_params = sum(p.numel() for p in large.model.parameters())
        assert large_params >= 15 * small_params
        size = sum(f.stat().st_size for f in DEMO_MODELS.rglob("*") if f.is_file())
        assert size <= 25 * 1024 * 1024
    finally:
        small.close()
        large.close()


def test_large_model_solves_held_out_problems() -> None:
    small = HFEngine.load(str(DEMO_MODELS / "small"))
    large = HFEngine.load(str(DEMO_MODELS / "large"))
    collab = Collaborator(small, large, CollabParams(policy="large", temperature=0.0))
    problems = make_split("test", 8)
    try:
        results = [asyncio.run(collab.run(p.messages())) for p in problems]
    finally:
        small.close()
        large.close()
    solved = sum(verify(r.answer, p.answer) for r, p in zip(results, problems, strict=True))
    assert solved >= 6, [(r.reasoning, r.answer, p.answer) for r, p in zip(results, problems, strict=True)]
    # Thinking follows the task's format: one step per operation, each opening with its value.
    first = results[0]
    assert first.steps[0].text == problems[0].steps()[0] + "\n\n"
    assert first.stop_reason == "think_end"

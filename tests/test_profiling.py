"""Measuring a profile: the arithmetic on a scripted engine, Ray's accelerator names, a real run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from glimp_ray.config import ModelConfig
from glimp_ray.profiling import accelerator_of, concurrencies, measure, profile_pool, ray_accelerator_name
from glimp_ray.types import StepRequest, StepResult

BASE_S, SLOPE_S, PREFILL_S = 0.010, 0.002, 0.001


class ScriptedEngine:
    """Each call's decode takes ℓ(b) per token past the first, b the calls running together."""

    max_context = 4096

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.released: list[str] = []

    def tokenizer(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text)))}  # one token a character

    async def step(self, request: StepRequest) -> StepResult:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0)  # the other calls of the batch join before any finishes
        batch = self.peak
        self.running -= 1
        if self.running == 0:
            self.peak = 0
        prompt = len(request.prompt or "") + len(request.transcript)
        if request.generate is None:  # a glimpse: its prefill and 3 ms
            return StepResult(
                [], "", "length", entropy=1.0, prefill_tokens=prompt, prefill_s=PREFILL_S * prompt + 0.003
            )
        tokens = request.generate.max_tokens
        return StepResult(
            list(range(tokens)),
            "",
            "length",
            prefill_tokens=prompt,
            generated_tokens=tokens,
            prefill_s=PREFILL_S * prompt,
            decode_s=(tokens - 1) * (BASE_S + SLOPE_S * (batch - 1)),
        )

    async def release(self, session_id: str) -> None:
        self.released.append(session_id)


def test_measure_recovers_the_scripted_engine() -> None:
    engine = ScriptedEngine()
    figures = asyncio.run(measure(engine, max_concurrency=6, tokens=16, repeats=1))
    assert sorted(figures["decode_s"]) == [1, 2, 4, 6]
    for b, seconds in figures["decode_s"].items():
        assert seconds == pytest.approx(BASE_S + SLOPE_S * (b - 1), rel=1e-9)
    assert figures["prefill_s_per_token"] == pytest.approx(PREFILL_S, rel=1e-9)
    assert figures["glimpse_s"] == pytest.approx(0.003, rel=1e-6)
    assert len(engine.released) >= 1 + 2 + 4 + 6  # every measured session let go


def test_concurrencies_double_up_to_the_max() -> None:
    assert concurrencies(1) == [1]
    assert concurrencies(8) == [1, 2, 4, 8]
    assert concurrencies(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize(
    ("device", "ray"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA L4", "L4"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA GeForce RTX 4090", "GeForce-RTX-4090"),
    ],
)
def test_cuda_names_map_as_ray_names_them(device: str, ray: str) -> None:
    assert ray_accelerator_name(device) == ray


def test_the_cpu_is_named_by_its_model() -> None:
    name = accelerator_of(torch.device("cpu"))
    assert name.startswith("cpu:") and len(name) > len("cpu:")


def test_a_real_engine_profile(tiny_pair: tuple[Path, Path]) -> None:
    small, _ = tiny_pair
    p = profile_pool(ModelConfig(model=str(small), max_running=4), max_concurrency=2, tokens=8, repeats=1)
    assert sorted(p.decode_s) == [1, 2] and all(s > 0 for s in p.decode_s.values())
    assert p.max_concurrency == 2 and p.engine == "hf" and p.dtype == "float32"
    assert p.kv_bytes_per_token > 0 and p.kv_budget_bytes >= p.kv_bytes_per_token
    assert p.prefill_s_per_token > 0 and p.accelerator.startswith("cpu:")
    assert "8 sampled tokens" in p.notes["method"]
    with pytest.raises(ValueError, match="measures the hf engine"):
        profile_pool(ModelConfig(model=str(small), engine="vllm"))


def test_a_pool_is_read_from_an_in_process_or_a_serve_config(tmp_path: Path) -> None:
    from glimp_ray.config import ConfigError
    from glimp_ray.profiling import pool_model

    root = Path(__file__).parent.parent / "configs"
    assert pool_model(str(root / "demo-local.yaml"), "small").model.endswith("small")
    assert pool_model(str(root / "demo.yaml"), "large").model.endswith("large")  # Serve: the app's args
    assert pool_model(str(root / "r1-1.5b-r1-32b.yaml"), "large").model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    empty = tmp_path / "serve.yaml"
    empty.write_text("applications: [{name: x, import_path: a:b}]\n")
    with pytest.raises(ConfigError, match="no application with args"):
        pool_model(str(empty), "small")
    with pytest.raises(ConfigError, match="config file not found"):
        pool_model(str(tmp_path / "missing.yaml"), "small")

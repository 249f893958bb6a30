"""Measure an :class:`~glimp_ray.profile.EngineProfile`: one pool's engine, in this process, on
the hardware it runs on (``glimp-ray profile``).

In pipeline order: a warm-up call; prefill seconds per token (a long prompt, one token
generated); a glimpse's cost (a glimpse on a session whose prompt is cached, less the prefill of
its new tokens); then the batching curve: at ``b`` = 1, 2, 4, ... up to the engine's
``max_running``, ``b`` concurrent generate calls of a fixed length, each call's decode seconds
per generated token, their token-weighted mean. KV bytes per token and the KV budget are the
engine's own (:class:`~glimp_ray.engine.kv_memory.KVBudget`).
"""

from __future__ import annotations

import asyncio
import datetime
import platform
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from glimp_ray.config import ConfigError, GlimpConfig, ModelConfig, load_config, parse_config
from glimp_ray.profile import EngineProfile
from glimp_ray.types import GenerateSpec, GlimpseSpec, SamplingParams, StepRequest, StepResult

PROMPT = "Count the steps: one, two, three, four, five, six, seven, eight, nine, ten."
# Ray's own rule (ray/_private/accelerators/nvidia_gpu.py): "NVIDIA A100-SXM4-80GB" -> "A100".
_NVIDIA_NAME = re.compile(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)")


def ray_accelerator_name(device_name: str) -> str:
    """A CUDA device's name as Ray's ``accelerator_type`` names it."""
    match = _NVIDIA_NAME.match(device_name)
    found = match.group(1).replace(" ", "-") if match else None
    if found and len(found) > 1:
        return found
    return re.sub(r"^NVIDIA\s+", "", device_name).strip().replace(" ", "-")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def accelerator_of(device: torch.device) -> str:
    """Ray's accelerator name of a CUDA device, ``cpu:<model name>`` for the CPU."""
    if device.type == "cuda":
        return ray_accelerator_name(torch.cuda.get_device_name(device))
    return f"cpu:{cpu_name()}"


def concurrencies(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... up to ``max_concurrency``, which is always measured."""
    sizes = [1]
    while sizes[-1] * 2 <= max_concurrency:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_concurrency:
        sizes.append(max_concurrency)
    return sizes


def generate_request(session_id: str, tokens: int, prompt: str = PROMPT) -> StepRequest:
    """A call writing up to ``tokens`` tokens with no stop string (sampled, so it rarely ends early)."""
    return StepRequest(
        session_id=session_id,
        prompt=prompt,
        generate=GenerateSpec(max_tokens=tokens, stop=(), sampling=SamplingParams(temperature=1.0, top_p=1.0, seed=0)),
    )


def per_token_s(results: Sequence[StepResult]) -> float:
    """Decode seconds per generated token, token-weighted over the calls (the first token of each
    is the prefill's)."""
    decoded = sum(max(r.generated_tokens - 1, 0) for r in results)
    if decoded == 0:
        raise RuntimeError("the calls generated no tokens past the first: nothing to time")
    return sum(r.decode_s for r in results) / decoded


def prompt_of(engine: Any, tokens: int) -> str:
    """About ``tokens`` tokens of text (the engine's tokenizer's count of :data:`PROMPT`, repeated)."""
    per_char = len(engine.tokenizer(PROMPT)["input_ids"]) / len(PROMPT)
    text = " ".join([PROMPT] * (1 + int(tokens / per_char) // len(PROMPT)))
    return text[: int(tokens / per_char)]


async def _concurrent(engine: Any, requests: Sequence[StepRequest]) -> list[StepResult]:
    results = await asyncio.gather(*(engine.step(r) for r in requests))
    for request in requests:
        await engine.release(request.session_id)
    return list(results)


async def measure(
    engine: Any, max_concurrency: int, tokens: int, repeats: int = 3, prompt_tokens: int = 256
) -> dict[str, Any]:
    """The figures of a profile, measured on ``engine`` (an HFEngine); each decode point is the
    median of ``repeats`` runs (other work on a shared machine slows some)."""
    await _concurrent(engine, [generate_request(f"warm-{i}", 4) for i in range(max_concurrency)])
    long_prompt = prompt_of(engine, min(prompt_tokens, engine.max_context // 2))
    prefill = await _concurrent(engine, [generate_request("prefill", 1, long_prompt)])
    prefill_s_per_token = prefill[0].prefill_s / max(prefill[0].prefill_tokens, 1)
    await engine.step(generate_request("glimpse", 1))
    glimpse = await engine.step(
        StepRequest(session_id="glimpse", prompt=PROMPT, transcript="One.", glimpse=GlimpseSpec(threshold=None))
    )
    await engine.release("glimpse")
    glimpse_s = max(glimpse.model_s - prefill_s_per_token * glimpse.prefill_tokens, 0.0)
    decode_s: dict[int, float] = {}
    generated: dict[int, float] = {}
    for b in concurrencies(max_concurrency):
        runs = []
        for run in range(repeats):
            results = await _concurrent(engine, [generate_request(f"decode-{b}-{run}-{i}", tokens) for i in range(b)])
            runs.append(per_token_s(results))
            generated[b] = sum(r.generated_tokens for r in results) / b
        decode_s[b] = statistics.median(runs)
    return {
        "decode_s": decode_s,
        "prefill_s_per_token": prefill_s_per_token,
        "glimpse_s": glimpse_s,
        "mean_tokens": generated,
        "prefill_tokens": prefill[0].prefill_tokens,
    }


def pool_model(path: str, pool: str) -> ModelConfig:
    """A pool's model from an in-process config, or from a Serve config's application ``args``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (FileNotFoundError, yaml.YAMLError):
        data = None  # load_config says what is wrong
    if isinstance(data, dict) and "applications" in data:
        for app in data["applications"] or []:
            args = app.get("args") if isinstance(app, dict) else None
            if isinstance(args, dict):
                known = {key: value for key, value in args.items() if key in GlimpConfig.model_fields}
                config: GlimpConfig = parse_config(known, f"{path}: application {app.get('name')!r} args")
                return config.small if pool == "small" else config.large
        raise ConfigError(f"{path}: no application with args describing the models")
    config = load_config(path)
    return config.small if pool == "small" else config.large


def profile_pool(
    model: ModelConfig, max_concurrency: int | None = None, tokens: int = 64, repeats: int = 3
) -> EngineProfile:
    """Load one pool's model on its engine here and measure its profile (the HF engine only:
    vLLM keeps its KV accounting to itself)."""
    served = model.served()
    if served.engine != "hf":
        raise ValueError("glimp-ray profile measures the hf engine; this pool runs vllm")
    engine = served.load_engine()
    try:
        stand_in = {"stand_in": model.stand_in} if model.stand_in else {}  # measured: the stand-in, not the model
        return profile_engine(engine, served.name or engine.name, max_concurrency, tokens, repeats, stand_in)
    finally:
        engine.close()


def profile_engine(
    engine: Any,
    model_name: str,
    max_concurrency: int | None = None,
    tokens: int = 64,
    repeats: int = 3,
    notes: dict[str, Any] | None = None,
) -> EngineProfile:
    """Measure the profile of a loaded HFEngine (``notes`` are added to the profile's own)."""
    most = min(max_concurrency or engine.scheduler.max_running, engine.scheduler.max_running)
    started = time.monotonic()
    figures = asyncio.run(measure(engine, most, tokens, repeats))
    elapsed = time.monotonic() - started
    device = next(engine.model.parameters()).device
    return EngineProfile(
        model=model_name,
        engine="hf",
        dtype=str(engine.model.dtype).removeprefix("torch."),
        accelerator=accelerator_of(device),
        decode_s=figures["decode_s"],
        prefill_s_per_token=figures["prefill_s_per_token"],
        glimpse_s=figures["glimpse_s"],
        kv_bytes_per_token=engine.budget.bytes_per_token,
        kv_budget_bytes=engine.budget.capacity,
        max_concurrency=most,
        notes={
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "torch_threads": torch.get_num_threads(),
            "method": (
                f"glimp-ray profile: in-process HFEngine; decode_s[b] = b concurrent calls of up to {tokens} "
                "sampled tokens (no stop string), wall-clock decode seconds per generated token past the "
                f"first, token-weighted, median of {repeats} runs; prefill over a "
                f"{figures['prefill_tokens']}-token prompt; glimpse_s = a glimpse on a cached session less the "
                "prefill of its new tokens"
            ),
            "mean_tokens_per_call": {str(b): round(t, 1) for b, t in figures["mean_tokens"].items()},
            "seconds": round(elapsed, 1),
            **(notes or {}),
        },
    )


__all__ = [
    "accelerator_of",
    "concurrencies",
    "measure",
    "pool_model",
    "profile_engine",
    "profile_pool",
    "ray_accelerator_name",
]

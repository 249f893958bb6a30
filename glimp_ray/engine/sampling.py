"""Sampling one token with transformers' logits warpers and a per-request generator."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from glimp_ray.types import SamplingParams


def build_processors(params: SamplingParams) -> LogitsProcessorList:
    """Temperature then top-p, as in ``generate``; empty for greedy decoding."""
    processors = LogitsProcessorList()
    if params.temperature > 0:
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    return processors


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample_token(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    params: SamplingParams,
    processors: LogitsProcessorList,
    generator: torch.Generator,
) -> int:
    """Sample from ``logits`` (shape ``[vocab]``); ``input_ids`` is ``[1, seq]``."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    scores = processors(input_ids, logits.float().unsqueeze(0))  # type: ignore[arg-type]
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))

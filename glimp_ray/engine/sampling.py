"""Sampling with transformers' logits warpers and a per-request generator, one request or a
batch of them (rows with the same parameters are warped together)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from glimp_ray.engine.generation_defaults import resolve_sampling
from glimp_ray.engine.sequence import Sequence
from glimp_ray.types import SamplingParams


def build_processors(params: SamplingParams) -> LogitsProcessorList:
    """Temperature, top-k, top-p then min-p, as in ``generate``; empty for greedy decoding. The
    engine resolves ``params`` against its model's defaults first
    (:func:`~glimp_ray.engine.generation_defaults.resolve_sampling`); a field still unset takes the
    project's default."""
    temperature, top_p, top_k, min_p = _resolved(params)
    processors = LogitsProcessorList()
    if temperature > 0:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        if min_p > 0:
            processors.append(MinPLogitsWarper(min_p))
    return processors


def _resolved(params: SamplingParams) -> tuple[float, float, int, float]:
    """Temperature, top-p, top-k and min-p, each set."""
    r = resolve_sampling(params, {})
    return r.temperature, r.top_p, r.top_k, r.min_p  # type: ignore[return-value]


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample_tokens(
    logits: torch.Tensor,
    rows: list[tuple[SamplingParams, LogitsProcessorList, torch.Generator]],
) -> list[int]:
    """One token per row of ``logits`` (``[rows, vocab]``), each with its own parameters and
    generator. Rows with the same (resolved) parameters are warped together; each row's draw is
    the one it would get alone."""
    tokens = [0] * len(rows)
    groups: dict[tuple[float, float, int, float], list[int]] = {}
    for i, (params, _, _) in enumerate(rows):
        groups.setdefault(_resolved(params), []).append(i)
    for (temperature, *_), members in groups.items():
        chosen = (
            logits if len(members) == len(rows) else logits.index_select(0, torch.tensor(members, device=logits.device))
        )
        if temperature == 0:
            for i, token in zip(members, chosen.argmax(dim=-1).tolist(), strict=True):
                tokens[i] = int(token)
            continue
        processors = rows[members[0]][1]
        scores = processors(torch.zeros((len(members), 0), dtype=torch.long), chosen.float())  # type: ignore[arg-type]
        probs = torch.softmax(scores, dim=-1)
        for row, i in enumerate(members):
            tokens[i] = int(torch.multinomial(probs[row], 1, generator=rows[i][2]))
    return tokens


def sample_each(seqs: list[Sequence], fail: Callable[[Sequence, BaseException], None]) -> list[int | None]:
    """The next token of every sequence (from its ``logits``, sampling parameters and generator),
    sampled together; if that fails, each alone, and one whose sampling fails goes to ``fail``
    (``None`` in its place)."""
    rows = [(seq.sampling, seq.processors, seq.generator) for seq in seqs]
    try:
        return list(sample_tokens(torch.stack([seq.logits for seq in seqs]), rows))  # type: ignore[arg-type]
    except Exception:  # find the request at fault: each samples alone
        tokens: list[int | None] = []
        for seq, row in zip(seqs, rows, strict=True):
            try:
                tokens.append(sample_tokens(seq.logits.unsqueeze(0), [row])[0])  # type: ignore[list-item]
            except Exception as exc:
                fail(seq, exc)
                tokens.append(None)
        return tokens

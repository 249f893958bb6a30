"""What the vLLM engine sends vLLM and reads back: the ``SamplingParams`` of a step (its own
sampling resolved against the model's defaults), the glimpse's signals from a position's top-k
logprobs, and the environment its engine-core process starts in."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

from glimp_ray.engine.generation_defaults import Defaults, resolve_sampling
from glimp_ray.entropy import logprobs_signals, topk_entropy
from glimp_ray.types import GlimpseSignals, SamplingParams


def _values(logprobs: dict[int, Any]) -> Any:
    import torch

    return torch.tensor([float(getattr(lp, "logprob", lp)) for lp in logprobs.values()], dtype=torch.float64)


def logprobs_entropy(logprobs: dict[int, Any], k: int) -> float:
    """Entropy of the ``k`` most likely first tokens, renormalised, from vLLM's logprobs of one
    position (the sampled token may be an extra entry beyond the top k)."""
    return float(topk_entropy(_values(logprobs), k))


def position_signals(logprobs: dict[int, Any], k: int) -> GlimpseSignals:
    """The glimpse's signals from vLLM's raw logprobs of one position: the top-``k`` entropy and the
    top two probabilities (vLLM's logprobs are over the whole vocabulary, before temperature)."""
    return logprobs_signals(_values(logprobs), k)


# The top-k a step's token entropies are taken over on vLLM when no glimpse names one.
SIGNAL_TOP_K = 20


def token_signal(logprobs: dict[int, Any], token: int, k: int) -> tuple[float, float]:
    """One generated position's step signals from vLLM's raw logprobs: the top-``k`` entropy
    (renormalised) and the sampled ``token``'s log-probability (vLLM always returns it)."""
    entropy = float(topk_entropy(_values(logprobs), k))
    chosen = logprobs.get(token)
    return entropy, float(getattr(chosen, "logprob", chosen)) if chosen is not None else float("nan")


def probe_from_logprobs(logprobs: dict[int, Any], ids: list[int]) -> float:
    """The probe's probability from vLLM's top-k logprobs of one position: the probe tokens found
    among them (one outside the top k counts as 0, so the score is a lower bound)."""
    return sum(math.exp(float(getattr(lp, "logprob", lp))) for token, lp in logprobs.items() if token in ids)


def logprobs_count(k: int | None) -> int | None:
    """How many logprobs to ask vLLM for: the glimpse's ``k``, and at least 2 (the margin's top-2;
    with 1, the extra entry vLLM adds is the sampled token, not the second most likely)."""
    return None if k is None else max(k, 2)


def step_params(
    sampling: SamplingParams, defaults: Defaults, max_tokens: int, stop: tuple[str, ...], logprobs: int | None
) -> Any:
    """vLLM's ``SamplingParams`` for a step that writes tokens: ``sampling`` resolved against the
    model's ``defaults`` (what vLLM's OpenAI server would apply), streamed as deltas."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = resolve_sampling(sampling, defaults)
    assert s.temperature is not None and s.top_p is not None and s.top_k is not None and s.min_p is not None
    greedy = s.temperature == 0
    params = VLLMSamplingParams(
        max_tokens=max_tokens,
        temperature=s.temperature,
        top_p=1.0 if greedy else s.top_p,
        top_k=0 if greedy else s.top_k,
        min_p=0.0 if greedy else s.min_p,
        seed=s.seed,
        stop=list(stop) or None,
        include_stop_str_in_output=True,
        logprobs=logprobs_count(logprobs),
        flat_logprobs=True,  # a few flat lists per request, not 21 objects per token
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
    )
    params.output_kind = RequestOutputKind.DELTA
    return params


def glimpse_params(k: int) -> Any:
    """vLLM's ``SamplingParams`` for a glimpse alone: one greedy token and its top-k logprobs."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = VLLMSamplingParams(
        max_tokens=1, temperature=0.0, logprobs=logprobs_count(k), detokenize=False, flat_logprobs=True
    )
    params.output_kind = RequestOutputKind.DELTA
    return params


def model_defaults(llm: Any) -> dict[str, float]:
    """The model's sampling defaults as vLLM's OpenAI server reads them (its ``generation_config``
    setting included: ``vllm`` turns them off)."""
    from glimp_ray.engine.generation_defaults import sampling_defaults

    config = getattr(llm, "model_config", None)
    read = getattr(config, "get_diff_sampling_param", None)
    return sampling_defaults(read()) if read is not None else {}


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set environment variables (those not None) while vLLM starts its engine-core process."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

"""A model's sampling defaults, from its ``generation_config.json``, applied as vLLM's OpenAI server
applies them: a value the request (or the config) sets wins, then the model's, then this
project's (:data:`~glimp_ray.types.DEFAULT_TEMPERATURE`, :data:`~glimp_ray.types.DEFAULT_TOP_P`, no
top-k, no min-p). Qwen3's thinking models, for one, ship temperature 0.6, top-p 0.95 and top-k 20.

vLLM's ``AsyncLLM`` (unlike its OpenAI server) and transformers' forwards apply none of them by
themselves, so both engines resolve every request's sampling here. Only the parameters
:class:`~glimp_ray.types.SamplingParams` has are taken (vLLM's server also takes the penalties
and ``max_new_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glimp_ray.types import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, SamplingParams

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p")
Defaults = Mapping[str, float]


def sampling_defaults(values: Mapping[str, Any] | None) -> dict[str, float]:
    """The sampling values among ``values`` (a generation config's non-default entries, e.g.
    ``GenerationConfig.to_diff_dict()`` or vLLM's ``get_diff_sampling_param()``)."""
    if not values:
        return {}
    return {key: float(values[key]) for key in SAMPLING_KEYS if values.get(key) is not None}


def generation_config_defaults(generation_config: Any) -> dict[str, float]:
    """The sampling defaults of a transformers ``GenerationConfig`` (``None``: none): only what its
    file sets (transformers 5 leaves every unset sampling value ``None``)."""
    if generation_config is None:
        return {}
    return sampling_defaults(generation_config.to_diff_dict())


def resolve_sampling(params: SamplingParams, defaults: Defaults) -> SamplingParams:
    """``params`` with every field set: the request's value, else the model's default, else the
    project's. A top-k of 0 or below is off (0), as in both transformers and vLLM."""

    def pick(name: str, fallback: float) -> float:
        value = getattr(params, name)
        return float(value if value is not None else defaults.get(name, fallback))

    return SamplingParams(
        temperature=pick("temperature", DEFAULT_TEMPERATURE),
        top_p=pick("top_p", DEFAULT_TOP_P),
        seed=params.seed,
        top_k=max(int(pick("top_k", 0)), 0),
        min_p=pick("min_p", 0.0),
    )

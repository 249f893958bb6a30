"""Loading a causal LM and its tokenizer, and the facts about them the engine needs."""

from __future__ import annotations

import os
from typing import Any

import torch

from glimp_ray.engine.base import EngineError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when this process sees a GPU (Ray gives a replica with ``num_gpus`` its
    own), else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(model: str, tokenizer: str | None, device: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """The model (on ``device``, in eval mode) and its tokenizer, from a local directory or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    if (os.path.isabs(model) or model.startswith(".")) and not os.path.isdir(model):
        raise EngineError(f"cannot load model {model!r}: no such directory")
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(
            model, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise EngineError(f"cannot load model {model!r}: {exc}") from exc
    return lm.to(device).eval(), tok  # type: ignore[arg-type]


def longest_token_chars(tokenizer: Any) -> int:
    """The longest vocabulary entry in characters: an upper bound on the text one token decodes
    to (byte-level entries spell each byte as one character)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        return 1 << 10
    return max((len(token) for token in vocab), default=1) or 1


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every end-of-sequence id the generation config, the model config or the tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def max_context(model: Any, tokenizer: Any) -> int:
    """The model's context in tokens: its position embeddings, else the tokenizer's limit."""
    value = getattr(model.config, "max_position_embeddings", None)
    if isinstance(value, int) and value > 0:
        return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1 << 30 else 1 << 20

"""The glimpse's signals of one next-token distribution: its entropy (in nats) and the
probabilities of its two most likely tokens.

``full`` is the exact entropy of the untempered next-token distribution over the whole
vocabulary. ``topk`` renormalises the top ``k`` probabilities first, which is what the
paper's reference code computes from vLLM's top-20 logprobs. Both are taken over the finite
logits: a ``-inf`` logit (a masked token) has probability 0 and adds nothing. A signal that
still comes out non-finite (a NaN or ``+inf`` logit, every logit masked) raises
:class:`~glimp_ray.engine.base.NonFiniteSignalError`: routing on it would be guesswork.
"""

from __future__ import annotations

import math

import torch

from glimp_ray.engine.base import NonFiniteSignalError
from glimp_ray.types import EntropyKind, GlimpseSignals


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dimension of raw logits, computed in float64 (``-inf`` logits are
    tokens of probability 0: ``0 · log 0`` counts as 0, not NaN)."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    probs = log_probs.exp()
    return -torch.where(probs == 0, 0.0, probs * log_probs).sum(dim=-1)  # NaN stays NaN


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the top-``k`` probabilities renormalised to sum to one."""
    k = min(k, logits.shape[-1])
    # Softmax is monotonic, so renormalising the top-k probabilities equals a softmax
    # over the top-k logits.
    return full_entropy(torch.topk(logits, k, dim=-1).values)


def finite_signal(value: float, what: str) -> float:
    """``value``, or :class:`NonFiniteSignalError` when it is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteSignalError(
            f"the glimpse's {what} is {value}: the model's next-token logits hold NaN or +inf, or mask "
            "every token; refusing to route on it"
        )
    return value


def glimpse_entropy(logits: torch.Tensor, kind: EntropyKind = "full", top_k: int = 20) -> float:
    """Entropy of one next-token distribution (``logits`` of shape ``[vocab]``)."""
    if kind == "full":
        value = float(full_entropy(logits))
    elif kind == "topk":
        value = float(topk_entropy(logits, top_k))
    else:
        raise ValueError(f"unknown entropy kind {kind!r}; expected 'full' or 'topk'")
    return finite_signal(value, f"{kind} entropy")


def top2_probs(log_probs: torch.Tensor) -> tuple[float, float]:
    """The two largest probabilities of ``[n]`` log-probabilities (the second is 0 with one)."""
    top = torch.topk(log_probs.double(), min(2, log_probs.shape[-1])).values.exp().tolist()
    top1, top2 = top[0], (top[1] if len(top) > 1 else 0.0)
    return finite_signal(top1, "top-1 probability"), finite_signal(top2, "top-2 probability")


def glimpse_signals(logits: torch.Tensor, kind: EntropyKind = "full", top_k: int = 20) -> GlimpseSignals:
    """Every glimpse signal of one next-token distribution (``logits`` of shape ``[vocab]``), from
    the forward that gave the logits: the entropy of ``kind`` and the top two probabilities over
    the whole vocabulary."""
    entropy = glimpse_entropy(logits, kind, top_k)
    top1, top2 = top2_probs(torch.log_softmax(logits.double(), dim=-1))
    return GlimpseSignals(entropy, top1, top2)


def logprobs_signals(logprobs: torch.Tensor, k: int) -> GlimpseSignals:
    """The glimpse signals from the top log-probabilities of one position (e.g. vLLM's top-k
    logprobs: ``[n]``, any order, maybe an extra entry beyond the top ``k``): the top-``k`` entropy,
    renormalised, and the top two probabilities as given (they are over the whole vocabulary)."""
    entropy = finite_signal(float(topk_entropy(logprobs, k)), "top-k entropy")
    top1, top2 = top2_probs(logprobs)
    return GlimpseSignals(entropy, top1, top2)

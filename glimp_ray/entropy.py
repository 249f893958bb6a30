"""First-token entropy, the glimpse signal (in nats).

``full`` is the exact entropy of the untempered next-token distribution over the whole
vocabulary. ``topk`` renormalises the top ``k`` probabilities first, which is what the
paper's reference code computes from vLLM's top-20 logprobs.
"""

from __future__ import annotations

import torch

from glimp_ray.types import EntropyKind


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dimension of raw logits, computed in float64."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the top-``k`` probabilities renormalised to sum to one."""
    k = min(k, logits.shape[-1])
    # Softmax is monotonic, so renormalising the top-k probabilities equals a softmax
    # over the top-k logits.
    return full_entropy(torch.topk(logits, k, dim=-1).values)


def glimpse_entropy(logits: torch.Tensor, kind: EntropyKind = "full", top_k: int = 20) -> float:
    """Entropy of one next-token distribution (``logits`` of shape ``[vocab]``)."""
    if kind == "full":
        return float(full_entropy(logits))
    if kind == "topk":
        return float(topk_entropy(logits, top_k))
    raise ValueError(f"unknown entropy kind {kind!r}; expected 'full' or 'topk'")

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glimp_ray.engine.base import NonFiniteSignalError
from glimp_ray.entropy import full_entropy, glimpse_entropy, glimpse_signals, logprobs_signals, topk_entropy


def reference_entropy(logits: np.ndarray) -> float:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_entropy_matches_float64_reference(seed: int) -> None:
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(seed), dtype=torch.float32) * 3
    assert glimpse_entropy(logits, "full") == pytest.approx(reference_entropy(logits.numpy()), abs=1e-9)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_topk_entropy_renormalises_top_k(k: int) -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(k)) * 2
    top = np.sort(logits.numpy())[-k:]
    assert glimpse_entropy(logits, "topk", k) == pytest.approx(reference_entropy(top), abs=1e-9)


def test_entropy_limits() -> None:
    assert float(full_entropy(torch.zeros(64))) == pytest.approx(math.log(64))
    peaked = torch.full((64,), -1e4)
    peaked[3] = 0
    assert float(full_entropy(peaked)) == pytest.approx(0.0, abs=1e-12)
    logits = torch.randn(10)
    assert float(topk_entropy(logits, 50)) == pytest.approx(float(full_entropy(logits)))


def test_entropy_is_untempered_and_batched() -> None:
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    batched = full_entropy(logits)
    assert batched.shape == (3,)
    for row, value in zip(logits, batched, strict=True):
        assert float(value) == pytest.approx(reference_entropy(row.numpy()))


def test_unknown_entropy_kind() -> None:
    with pytest.raises(ValueError, match="unknown entropy kind"):
        glimpse_entropy(torch.zeros(4), "bogus")  # type: ignore[arg-type]


def test_masked_logits_count_as_probability_zero() -> None:
    """A ``-inf`` logit (a masked vocabulary) is a token of probability 0: the entropy is that of
    the finite logits, not NaN, for both kinds."""
    logits = torch.randn(200, generator=torch.Generator().manual_seed(3)) * 2
    masked = logits.clone()
    masked[::3] = -math.inf
    finite = logits[torch.isfinite(masked)].numpy()
    assert glimpse_entropy(masked, "full") == pytest.approx(reference_entropy(finite), rel=1e-9)
    top = np.sort(finite)[-20:]
    assert glimpse_entropy(masked, "topk", 20) == pytest.approx(reference_entropy(top), rel=1e-9)
    # Fewer finite logits than k: the top-k holds -inf entries, which add nothing.
    few = torch.full((50,), -math.inf)
    few[[4, 9]] = torch.tensor([1.0, 0.0])
    assert glimpse_entropy(few, "topk", 20) == pytest.approx(reference_entropy(np.array([1.0, 0.0])), rel=1e-9)


@pytest.mark.parametrize("kind", ["full", "topk"])
@pytest.mark.parametrize("broken", ["nan", "+inf", "all masked"])
def test_a_non_finite_entropy_raises_an_engine_error(kind: str, broken: str) -> None:
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    if broken == "nan":
        logits[7] = math.nan
    elif broken == "+inf":
        logits[7] = math.inf
    else:
        logits[:] = -math.inf
    with pytest.raises(NonFiniteSignalError, match="entropy"):
        glimpse_entropy(logits, kind, 20)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteSignalError):
        glimpse_signals(logits, kind, 20)  # type: ignore[arg-type]


def test_glimpse_signals_are_the_softmax_top_two() -> None:
    """Top-1 and top-2 probabilities over the whole vocabulary, whatever the entropy's kind, and
    the same from the top logprobs alone (what vLLM returns), an extra entry included."""
    logits = torch.randn(300, generator=torch.Generator().manual_seed(5)) * 3
    probs = np.sort(np.exp(logits.double().numpy() - logits.double().numpy().max()))[::-1]
    probs = probs / probs.sum()
    for kind in ("full", "topk"):
        signals = glimpse_signals(logits, kind, 5)  # type: ignore[arg-type]
        assert (signals.top1_prob, signals.top2_prob) == pytest.approx((probs[0], probs[1]), rel=1e-9)
        assert signals.margin == pytest.approx(probs[0] - probs[1], rel=1e-9)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    top = torch.topk(log_probs, 5).values
    given = torch.cat([top.flip(0), log_probs[:1]])  # any order, plus the sampled token's entry
    from_logprobs = logprobs_signals(given, 5)
    assert from_logprobs.entropy == pytest.approx(glimpse_entropy(logits, "topk", 5), rel=1e-9)
    assert (from_logprobs.top1_prob, from_logprobs.top2_prob) == pytest.approx((probs[0], probs[1]), rel=1e-9)
    one = logprobs_signals(top[:1], 1)
    assert (one.entropy, one.top2_prob) == (0.0, 0.0)  # a single entry: no second token

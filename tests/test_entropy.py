from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glimp_ray.entropy import full_entropy, glimpse_entropy, topk_entropy


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

"""Float comparisons that hold on any CPU.

Another CPU (or another thread count) sums in another order, so model outputs differ in
their last bits. Values are compared with a tolerance relative to their magnitude, and what
matters (the argmax, the route) exactly where it is not a near-tie.
"""

from __future__ import annotations

import pytest
import torch

# float32 forwards of a few layers: differences of ~1e-5 relative were seen across CPUs; a
# wrong position, mask or cache row moves logits by O(1).
LOGITS_RTOL = 1e-3
# Entropy (nats) of such logits: its error is at most about the logits' error.
ENTROPY_TOL = {"rel": 1e-3, "abs": 1e-4}


def logits_tolerance(expected: torch.Tensor) -> float:
    """Absolute tolerance for logits: relative to their largest magnitude (at least 1)."""
    return LOGITS_RTOL * max(1.0, float(expected.abs().max()))


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Values within the tolerance, and the same argmax unless the top two are a near-tie."""
    tol = logits_tolerance(expected)
    diff = float((actual.float() - expected.float()).abs().max())
    assert diff <= tol, f"{what}: logits differ by {diff:.3g} (tolerance {tol:.3g})"
    top2 = torch.topk(expected.float(), 2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 2 * tol
    same = actual.argmax(-1) == expected.argmax(-1)
    assert bool((same | ~decided).all()), f"{what}: argmax differs"


def tensors_close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Same shape and values within a tolerance relative to the expected magnitude."""
    if actual.shape != expected.shape:
        return False
    if expected.numel() == 0:
        return True
    return float((actual.float() - expected.float()).abs().max()) <= logits_tolerance(expected)


def entropy_approx(expected: float | list[float]) -> object:
    """``pytest.approx`` for entropies computed from model logits."""
    return pytest.approx(expected, **ENTROPY_TOL)


def midpoint_threshold(entropies: list[float], above: float | None = None) -> float:
    """A τ between two measured entropies, away from both (a τ equal to a measured value routes
    by its last bits): the midpoint of the widest gap between neighbours in the middle half, so
    about half the values fall on each side; with ``above``, the gap just above that value."""
    values = sorted(entropies)
    if len(values) < 2:
        raise ValueError("a midpoint needs at least two entropies")
    if above is not None:
        higher = [v for v in values if v > above]
        if not higher:
            raise ValueError(f"no entropy above {above}: {values}")
        i = values.index(min(higher)) - 1
    else:
        low, high = len(values) // 4, max(len(values) * 3 // 4, len(values) // 4 + 1)
        i = max((values[i + 1] - values[i], i) for i in range(low, min(high, len(values) - 1)))[1]
    if values[i + 1] - values[i] <= 2 * (ENTROPY_TOL["abs"] + ENTROPY_TOL["rel"] * abs(values[i])):
        raise ValueError(f"no gap wider than their noise between {values[i]} and {values[i + 1]}")
    return (values[i] + values[i + 1]) / 2

from __future__ import annotations

import math

import pytest

from glimp_ray.eval.metrics import auroc, percentile, quantile_threshold


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([0, 10], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 50))


def test_auroc_against_hand_computed_cases() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    # pairs (pos, neg): (0.4,0.1)>, (0.4,0.5)<, (0.7,0.1)>, (0.7,0.5)> -> 3/4
    assert auroc([0.1, 0.4, 0.5, 0.7], [False, True, False, True]) == 0.75
    assert math.isnan(auroc([1.0, 2.0], [True, True]))


def test_quantile_threshold_sends_the_fraction_large() -> None:
    entropies = [i / 10 for i in range(100)]
    tau = quantile_threshold(entropies, 0.25)
    assert sum(e > tau for e in entropies) == 25
    with pytest.raises(ValueError):
        quantile_threshold([], 0.2)


def test_signal_threshold_counts_probabilities_from_below() -> None:
    from glimp_ray.eval.metrics import signal_threshold

    values = [i / 100 for i in range(100)]
    assert sum(v > signal_threshold(values, 0.2, "entropy") for v in values) == 20
    assert sum(v < signal_threshold(values, 0.2, "top1") for v in values) == 20
    assert sum(v < signal_threshold(values, 0.3, "margin") for v in values) == 30
    with pytest.raises(ValueError):
        signal_threshold([], 0.2, "top1")
    with pytest.raises(ValueError):
        signal_threshold(values, 1.5, "margin")

from __future__ import annotations

import math

import pytest

from glimp_ray.eval.stats import mcnemar, mcnemar_exact, mean_sd, paired_bootstrap


def test_mean_sd_is_the_sample_standard_deviation() -> None:
    mean, sd = mean_sd([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert mean == 5.0
    assert sd == pytest.approx(math.sqrt(32 / 7), rel=1e-12)  # ddof=1, not the population's 2.0
    assert mean_sd([3.0]) == (3.0, 0.0)
    assert all(math.isnan(x) for x in mean_sd([]))


def test_mcnemar_exact_on_known_tables() -> None:
    # 1 vs 9 discordant pairs: 2 * P(Binomial(10, 1/2) <= 1) = 2 * 11 / 1024.
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    # 0 vs 5: 2 / 32; 2 vs 2 and no discordant pairs: no evidence at all.
    assert mcnemar_exact(0, 5) == pytest.approx(1 / 16, rel=1e-12)
    assert mcnemar_exact(2, 2) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # 10 vs 30: 2 * sum of C(40, k) for k <= 10 (1,221,246,132) / 2^40 = 0.0022214 (binom.test(10, 40) in R)
    assert mcnemar_exact(10, 30) == pytest.approx(2 * 1_221_246_132 / 2**40, rel=1e-12)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_mcnemar_counts_only_the_discordant_pairs() -> None:
    a = [True, True, False, False, True, True]
    b = [True, False, True, False, False, False]
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b) == (3, 1)
    assert result.p == pytest.approx(2 * 5 / 16, rel=1e-12)


def test_paired_bootstrap_is_deterministic_for_a_seed_and_centred_on_the_mean() -> None:
    differences = [0.1, 0.3, -0.2, 0.5, 0.4, 0.0, 0.2, 0.6, -0.1, 0.3]
    first = paired_bootstrap(differences, resamples=2000, seed=7)
    assert paired_bootstrap(differences, resamples=2000, seed=7) == first
    assert paired_bootstrap(differences, resamples=2000, seed=8) != first
    assert first.mean == pytest.approx(0.21, rel=1e-12) and first.n == 10
    assert first.low < first.mean < first.high
    assert first.p < 0.05  # nine of ten differences are >= 0, mean 0.21


def test_paired_bootstrap_p_values_at_the_extremes() -> None:
    assert paired_bootstrap([0.0] * 8, resamples=500).p == 1.0  # no difference at all
    far = paired_bootstrap([1.0, 1.1, 0.9, 1.05, 0.95, 1.0], resamples=999)
    assert far.p == pytest.approx(1 / 1000)  # none of the null resamples is that far out
    balanced = paired_bootstrap([-1.0, 1.0, -1.0, 1.0], resamples=999)
    assert balanced.mean == 0.0 and balanced.p == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap([])

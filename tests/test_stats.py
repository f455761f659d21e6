import math

import pytest

from hlb.stats import betainc, confidence_interval, mean, std, t_cdf, t_quantile


def test_mean_and_sample_std():
    assert mean([1, 2, 3, 4]) == 2.5
    assert std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(2.138089935)
    assert std([5.0]) == 0.0


@pytest.mark.parametrize("df, q975", [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281),
                                      (24, 2.0639), (49, 2.0096), (1000, 1.9623)])
def test_t_quantile_matches_tables(df, q975):
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q975, abs=1e-4)


def test_t_cdf_is_symmetric_and_matches_the_normal_for_large_df():
    assert t_cdf(0.0, 7) == pytest.approx(0.5)
    assert t_cdf(1.3, 7) + t_cdf(-1.3, 7) == pytest.approx(1.0)
    assert t_cdf(1.959964, 1e7) == pytest.approx(0.975, abs=1e-6)


def test_betainc_known_values():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)              # uniform
    assert betainc(2, 2, 0.5) == pytest.approx(0.5)
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248)


def test_confidence_interval_of_a_known_sample():
    xs = [0.9401, 0.9395, 0.9410, 0.9388, 0.9402]
    lo, hi = confidence_interval(xs)
    half = 2.7764 * std(xs) / math.sqrt(5)
    assert lo == pytest.approx(mean(xs) - half, abs=1e-6)
    assert hi == pytest.approx(mean(xs) + half, abs=1e-6)
    assert all(math.isnan(v) for v in confidence_interval([0.94]))

import math

import pytest

from hlb.bench.stats import (above_target, betainc, confidence_interval, holm_adjust, mean,
                             normal_cdf, normal_quantile, one_sided_p, paired_test,
                             ratio_of_means, runs_needed, std, t_cdf, t_quantile,
                             welch_from_summaries, welch_test)
from hlb.errors import UsageError


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


# Student's sleep data (Cushny and Peebles, 1905): extra hours of sleep under two drugs, the
# same ten patients. R's t.test(extra ~ group, data = sleep) and its paired = TRUE version
# print the values checked below (signs flipped: here diff = drug 2 - drug 1).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_normal_quantile_matches_tables_and_inverts_the_cdf():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.8) == pytest.approx(0.841621, abs=1e-6)
    assert normal_quantile(0.025) == pytest.approx(-1.959964, abs=1e-6)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    for p in (1e-9, 0.01, 0.3, 0.999):
        assert normal_cdf(normal_quantile(p)) == pytest.approx(p, rel=1e-9)
    assert normal_quantile(0.0) == -math.inf and normal_quantile(1.0) == math.inf


def test_welch_test_on_the_sleep_data():
    r = welch_test(SLEEP_1, SLEEP_2)
    assert r.test == "Welch"
    assert r.diff == pytest.approx(1.58)
    assert r.df == pytest.approx(17.776, abs=1e-3)
    assert r.ci95 == pytest.approx((-0.2054832, 3.3654832), abs=1e-6)
    assert r.p_value == pytest.approx(0.07939, abs=1e-5)
    # The same numbers from the textbook formulas, written out here.
    va, vb = std(SLEEP_1) ** 2 / 10, std(SLEEP_2) ** 2 / 10
    df = (va + vb) ** 2 / (va ** 2 / 9 + vb ** 2 / 9)
    se = math.sqrt(va + vb)
    assert r.df == pytest.approx(df) and r.se == pytest.approx(se)
    assert r.p_value == pytest.approx(2 * (1 - t_cdf(1.58 / se, df)))
    assert r.ci95[1] - r.diff == pytest.approx(t_quantile(0.975, df) * se)


def test_paired_test_on_the_sleep_data():
    r = paired_test(SLEEP_1, SLEEP_2)
    assert (r.test, r.df) == ("paired", 9)
    assert r.diff == pytest.approx(1.58)
    assert r.diff / r.se == pytest.approx(4.0621, abs=1e-4)
    assert r.ci95 == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    assert r.p_value == pytest.approx(0.002833, abs=1e-6)


def test_welch_with_two_df_matches_the_closed_form_t2_distribution():
    # Equal n and equal variances make the Welch df exactly 2(n - 1) = 2, and Student's t
    # with 2 df has F(t) = 1/2 + t / (2 sqrt(2 + t^2)) and F^-1(p) = (2p - 1) sqrt(2 / 4p(1-p)).
    r = welch_test([0.0, 2.0], [3.0, 5.0])
    t = 3 / math.sqrt(2)
    assert r.df == pytest.approx(2.0)
    assert r.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    half = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)) * math.sqrt(2)
    assert r.ci95 == pytest.approx((3 - half, 3 + half), abs=1e-6)


def test_paired_with_one_df_matches_the_cauchy_distribution():
    # Differences [1, 2]: mean 1.5, se 0.5, t = 3 with 1 df, which is the Cauchy distribution.
    r = paired_test([1.0, 2.0], [2.0, 4.0])
    assert (r.diff, r.se, r.df) == (pytest.approx(1.5), pytest.approx(0.5), 1)
    assert r.p_value == pytest.approx(1 - 2 * math.atan(3) / math.pi, abs=1e-9)
    half = math.tan(0.475 * math.pi) * 0.5
    assert r.ci95 == pytest.approx((1.5 - half, 1.5 + half), abs=1e-6)


@pytest.mark.parametrize("test", [welch_test, paired_test])
def test_identical_arms_show_no_difference(test):
    a = [0.9401, 0.9395, 0.9410, 0.9388, 0.9402]
    r = test(a, list(a))
    assert r.diff == 0 and r.p_value == pytest.approx(1.0)
    assert r.ci95[0] <= 0 <= r.ci95[1]          # paired: all differences 0, so (0, 0)


def test_a_planted_shift_is_found():
    noise = [0.01 * math.sin(7 * i) for i in range(8)]
    a = [94.0 + e for e in noise]
    b = [95.0 - e for e in noise]
    for r in (welch_test(a, b), paired_test(a, b)):
        assert r.p_value < 1e-6
        assert 0 < r.ci95[0] < 1.0 < r.ci95[1]


def test_paired_test_sees_a_consistent_shift_that_welch_misses():
    # Runs differ a lot by seed (0.3 points), the change adds 0.05 points to every seed.
    a = [0.940 + 0.003 * math.sin(3 * i) for i in range(10)]
    b = [x + 0.0005 + 0.00005 * math.cos(5 * i) for i, x in enumerate(a)]
    welch, paired = welch_test(a, b), paired_test(a, b)
    assert welch.diff == pytest.approx(paired.diff)
    assert welch.p_value > 0.5 and welch.ci95[0] < 0 < welch.ci95[1]
    assert paired.p_value < 1e-6 and paired.ci95[0] > 0


def test_tests_degrade_to_nan_without_spread_estimates():
    r = welch_test([0.94], [0.95, 0.96])
    assert r.diff == pytest.approx(0.015)
    assert math.isnan(r.p_value) and all(math.isnan(v) for v in r.ci95)
    assert math.isnan(paired_test([], []).diff)
    with pytest.raises(UsageError, match="equal length"):
        paired_test([1.0, 2.0], [1.0])
    # No spread at all: the difference is exact.
    r = welch_test([1.0, 1.0], [2.0, 2.0])
    assert (r.diff, r.ci95, r.p_value) == (1.0, (1.0, 1.0), 0.0)


def test_runs_needed_matches_the_closed_form():
    s, d = 0.0013, 0.0012                       # 0.13 points std, a 0.12 point change
    closed = 2 * ((1.959964 + 0.841621) * s / d) ** 2
    assert closed % 1 > 0.1                     # not near an integer, so ceil is stable
    assert runs_needed(d, s, s) == math.ceil(closed)
    assert runs_needed(-d, s, s) == math.ceil(closed)
    # Paired: the std of the differences alone, without the factor of 2.
    assert runs_needed(d, None, None, paired_std=s) == math.ceil(closed / 2)
    assert runs_needed(d, s, s, power=0.9) > runs_needed(d, s, s)
    assert runs_needed(1.0, s, s) == 2          # never fewer runs than give a std


def test_runs_needed_for_no_difference_or_missing_spread():
    assert runs_needed(0.0, 0.0013, 0.0013) == math.inf
    assert math.isnan(runs_needed(0.001, None, 0.0013))
    assert math.isnan(runs_needed(math.nan, 0.0013, 0.0013))


# Many comparisons (hlb.bench.sweep). The Holm values are worked by hand: sorted p 0.005,
# 0.01, 0.03, 0.04 times 4, 3, 2, 1 give 0.02, 0.03, 0.06, 0.04, and the running maximum makes
# the last 0.06; R's p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") prints the same.


def test_holm_adjust_of_a_worked_example():
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]                 # capped at 1, monotone
    assert holm_adjust([0.02]) == [0.02]                         # one test: nothing to adjust
    assert holm_adjust([]) == []
    # A missing test stays missing but still counts in m (3 here, not 2).
    adjusted = holm_adjust([math.nan, 0.01, 0.04])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.03, 0.08])


def test_one_sided_p_on_the_sleep_data():
    # R: t.test(drug 2, drug 1, paired = TRUE, alternative = "greater") gives p = 0.001416.
    r = paired_test(SLEEP_1, SLEEP_2)
    assert one_sided_p(r) == pytest.approx(0.0014165, abs=1e-6)
    assert one_sided_p(paired_test(SLEEP_2, SLEEP_1)) == pytest.approx(1 - 0.0014165, abs=1e-6)
    assert math.isnan(one_sided_p(paired_test([1.0], [2.0])))


def test_paired_interval_at_another_level_on_the_sleep_data():
    # 99%: t(0.995, 9 df) = 3.2498 from tables, se = 1.58 / 4.0621.
    r = paired_test(SLEEP_1, SLEEP_2, level=0.99)
    half = 3.2498 * 1.58 / 4.0621
    assert r.ci95 == pytest.approx((1.58 - half, 1.58 + half), abs=2e-4)
    assert r.p_value == pytest.approx(0.002833, abs=1e-6)        # the level moves no p-value


def test_above_target_matches_the_t_table():
    # Two values: t = (mean - target) / (std / sqrt 2) = 0.006314 / 0.001 = 6.314, the
    # tabulated one-sided 5% point of t with 1 degree of freedom.
    t, p = above_target([0.947314, 0.945314], 0.94)
    assert t == pytest.approx(6.314, rel=1e-6) and p == pytest.approx(0.05, abs=1e-4)
    # A mean on the target is a coin toss; below it, p above one half: t = -sqrt(3) with 2
    # degrees of freedom, whose cdf is 1/2 + t / (2 sqrt(2 + t^2)), gives p = 0.8873.
    assert above_target([0.93, 0.95], 0.94)[1] == pytest.approx(0.5)
    assert above_target([0.92, 0.93, 0.94], 0.94)[1] == pytest.approx(0.8873, abs=1e-4)
    assert all(math.isnan(v) for v in above_target([0.95], 0.94) + above_target([0.5] * 3, 0.9))


def test_welch_from_summaries_is_welch_on_the_values():
    a, b = [0.93, 0.94, 0.95, 0.94], [0.91, 0.95, 0.92]
    direct = welch_test(a, b)
    summed = welch_from_summaries((4, mean(a), std(a)), (3, mean(b), std(b)))
    assert summed == direct
    assert math.isnan(welch_from_summaries((1, 0.9, 0.0), (5, 0.9, 0.01)).p_value)


def test_a_ratio_of_paired_means_and_its_interval():
    # Exactly proportional pairs: the ratio is known without doubt.
    base = [1.0, 1.2, 0.9, 1.1]
    ratio, (lo, hi) = ratio_of_means([0.8 * x for x in base], base)
    assert ratio == pytest.approx(0.8) and lo == pytest.approx(0.8) and hi == pytest.approx(0.8)
    # By hand: a = [2, 3, 4], b = [2, 2, 2]: R = 1.5, a - R b = [-1, 0, 1] (std 1),
    # se = 1 / (sqrt(3) * 2), half-width t(0.975, 2) = 4.3027 times that.
    ratio, (lo, hi) = ratio_of_means([2.0, 3.0, 4.0], [2.0, 2.0, 2.0])
    half = 4.302652729911275 / (math.sqrt(3) * 2)
    assert ratio == 1.5 and lo == pytest.approx(1.5 - half, rel=1e-6)
    assert hi == pytest.approx(1.5 + half, rel=1e-6)
    assert math.isnan(ratio_of_means([1.0], [2.0])[1][0])
    with pytest.raises(UsageError):
        ratio_of_means([1.0, 2.0], [1.0])

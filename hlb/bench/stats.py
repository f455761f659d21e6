"""Statistics over runs: descriptive summaries, Student-t confidence intervals, and tests of
the difference between two sets of runs (Welch, paired) with the runs needed to detect one.

Hand-written so that the core needs nothing beyond torch and numpy; checked against tabulated
values in tests/test_stats.py.
"""

import math
from dataclasses import dataclass

from hlb.errors import UsageError


def mean(xs):
    return sum(xs) / len(xs)


def std(xs):
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a, b, x):
    # Continued fraction for the incomplete beta function (modified Lentz's method).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom (df may be fractional)."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def _invert(cdf, p, lo, hi):
    """The x in [lo, hi] with cdf(x) = p, by bisection (a cdf is monotone, so it always
    converges)."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_quantile(p, df):
    """The t with P(T <= t) = p."""
    return _invert(lambda t: t_cdf(t, df), p, -1e4, 1e4)


def confidence_interval(xs, level=0.95):
    """Two-sided Student-t interval for the mean; (nan, nan) with fewer than two values."""
    n = len(xs)
    if n < 2:
        return math.nan, math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * std(xs) / math.sqrt(n)
    return mean(xs) - half, mean(xs) + half


def above_target(xs, target):
    """(t, p) of the one-sample t-test whose alternative is mean(xs) > target: how a claim
    such as "a 94% mean" is checked (BENCHMARKS.md). NaN with fewer than two values or no
    spread."""
    if len(xs) < 2 or std(xs) == 0:
        return math.nan, math.nan
    t = (mean(xs) - target) / (std(xs) / math.sqrt(len(xs)))
    return t, 1 - t_cdf(t, len(xs) - 1)


@dataclass
class Summary:
    n: int                    # runs that finished (diverged runs are counted apart)
    diverged: int
    acc_mean: float
    acc_std: float
    acc_min: float
    acc_max: float
    acc_ci95: tuple
    time_mean: float
    time_std: float
    time_min: float
    time_max: float
    eval_time_per_epoch: float
    peak_mem_allocated: int
    peak_mem_reserved: int
    target_reached: int = None     # with a target accuracy: runs that reached it
    ttt_mean: float = math.nan     # time to target (s) over the runs that reached it
    ttt_std: float = math.nan


def summarize(results):
    done = [r for r in results if not r.diverged]
    nan = math.nan
    accs = [r.tta_acc for r in done]
    times = [r.train_time_s for r in done]
    epochs = sum(len(r.epochs) for r in done)
    return Summary(
        n=len(done),
        diverged=len(results) - len(done),
        acc_mean=mean(accs) if done else nan,
        acc_std=std(accs) if done else nan,
        acc_min=min(accs, default=nan),
        acc_max=max(accs, default=nan),
        acc_ci95=confidence_interval(accs),
        time_mean=mean(times) if done else nan,
        time_std=std(times) if done else nan,
        time_min=min(times, default=nan),
        time_max=max(times, default=nan),
        eval_time_per_epoch=sum(r.eval_time_s for r in done) / epochs if epochs else nan,
        peak_mem_allocated=max((r.peak_mem_allocated for r in results), default=0),
        peak_mem_reserved=max((r.peak_mem_reserved for r in results), default=0),
        **_time_to_target(done),
    )


def _time_to_target(done):
    if not any(r.epochs and r.epochs[0].tta_acc is not None for r in done):
        return {}
    times = [r.time_to_target for r in done if r.time_to_target is not None]
    return dict(target_reached=len(times),
                ttt_mean=mean(times) if times else math.nan,
                ttt_std=std(times) if times else math.nan)


# Comparing two sets of runs: "did my change help?"


def normal_cdf(x):
    # erfc keeps relative precision far into the lower tail, where 1 + erf(x) would not.
    return 0.5 * math.erfc(-x / math.sqrt(2))


def normal_quantile(p):
    """The z with P(Z <= z) = p for a standard normal Z."""
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return _invert(normal_cdf, p, -40.0, 40.0)


@dataclass
class DiffTest:
    """A difference of means, b - a, with its two-sided Student-t test."""
    test: str                 # "Welch" or "paired"
    diff: float               # mean(b) - mean(a); for paired, the mean of b_i - a_i
    ci95: tuple               # 95% confidence interval of diff
    p_value: float            # two-sided, for the null hypothesis diff == 0
    df: float                 # degrees of freedom (fractional for Welch)
    se: float                 # standard error of diff


def _t_test(test, diff, se, df, level=0.95):
    if not (se >= 0 and df > 0):                  # also catches NaN
        return DiffTest(test, diff, (math.nan, math.nan), math.nan, math.nan, math.nan)
    if se == 0:
        # No spread at all: the difference is exact, zero or not.
        return DiffTest(test, diff, (diff, diff), 1.0 if diff == 0 else 0.0, df, se)
    half = t_quantile(0.5 + level / 2, df) * se
    p = min(1.0, 2 * t_cdf(-abs(diff) / se, df))
    return DiffTest(test, diff, (diff - half, diff + half), p, df, se)


def welch_test(a, b):
    """Welch's unequal-variance t-test of mean(b) - mean(a), Welch-Satterthwaite df.

    Needs two values in each arm; with fewer, diff may be known but the rest is NaN.
    """
    return welch_from_summaries(*(_described(x) for x in (a, b)))


def _described(xs):
    return (len(xs), mean(xs) if xs else math.nan, std(xs))


def welch_from_summaries(a, b):
    """welch_test from each arm's (n, mean, sample std) alone: what a record's summary keeps."""
    (na, ma, sa), (nb, mb, sb) = a, b
    diff = mb - ma if na and nb else math.nan
    if na < 2 or nb < 2:
        return _t_test("Welch", diff, math.nan, math.nan)
    va, vb = sa ** 2 / na, sb ** 2 / nb
    if va + vb == 0:
        df = na + nb - 2                       # the formula is 0/0; take the pooled df
    else:
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    return _t_test("Welch", diff, math.sqrt(va + vb), df)


def ratio_of_means(a, b, level=0.95):
    """mean(a) / mean(b) over pairs (a_i, b_i) (the times of two arms, run by run), with a
    Student-t interval by the delta method: the spread of a_i - R b_i, over sqrt(n) mean(b),
    n - 1 degrees of freedom. Returns (R, (lo, hi)); the interval is NaN below two pairs."""
    if len(a) != len(b):
        raise UsageError(f"a ratio of paired means needs pairs, not {len(a)} and {len(b)}")
    if not a:
        return math.nan, (math.nan, math.nan)
    ratio = mean(a) / mean(b)
    if len(a) < 2:
        return ratio, (math.nan, math.nan)
    spread = std([x - ratio * y for x, y in zip(a, b)]) / (math.sqrt(len(a)) * mean(b))
    half = t_quantile(0.5 + level / 2, len(a) - 1) * spread
    return ratio, (ratio - half, ratio + half)


def paired_test(a, b, level=0.95):
    """Paired t-test on the differences b_i - a_i (n - 1 df); a and b pair up by index.
    `level` sets the interval's confidence (a sweep asks for 1 - alpha/m, see hlb.bench.sweep)."""
    if len(a) != len(b):
        raise UsageError(f"a paired test needs arms of equal length, not {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b)]
    if len(d) < 2:
        return _t_test("paired", d[0] if d else math.nan, math.nan, math.nan)
    return _t_test("paired", mean(d), std(d) / math.sqrt(len(d)), len(d) - 1, level)


def runs_needed(diff, std_a, std_b, alpha=0.05, power=0.8, paired_std=None):
    """Runs per arm for a two-sided test at level `alpha` to detect `diff` with `power`.

    Normal approximation: n = (z_{1-alpha/2} + z_power)^2 (std_a^2 + std_b^2) / diff^2, or
    with paired_std (the std of the pairwise differences) n = (...)^2 paired_std^2 / diff^2.
    It slightly undercounts for small n, where a t-test has heavier tails; the answer is
    rounded up and at least 2, the fewest runs that give a std. A zero diff needs infinitely
    many runs (math.inf); a NaN or None input gives NaN.
    """
    spread = [paired_std] if paired_std is not None else [std_a, std_b]
    if any(v is None or math.isnan(v) for v in [diff, *spread]):
        return math.nan
    if diff == 0:
        return math.inf
    z = normal_quantile(1 - alpha / 2) + normal_quantile(power)
    variance = sum(s * s for s in spread)
    return max(2, math.ceil(z * z * variance / (diff * diff)))


# Many comparisons at once (hlb.bench.sweep): corrections that keep the family-wise error at alpha.


def one_sided_p(t):
    """P(a difference this far above zero by chance) for a DiffTest: the p-value of the
    one-sided test whose alternative is diff > 0 (NaN stays NaN)."""
    return t.p_value / 2 if t.diff > 0 else 1 - t.p_value / 2


def holm_adjust(p_values):
    """Holm's step-down adjustment (Holm 1979) of m p-values, in their given order: the k-th
    smallest becomes max over j <= k of min(1, (m - j + 1) p_(j)). Rejecting the adjusted
    values below alpha keeps the chance of any false finding under alpha. A NaN (no test)
    stays NaN but still counts in m, which only makes the others more cautious."""
    m = len(p_values)
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * m
    running = 0.0
    for k, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted

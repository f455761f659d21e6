"""Statistics over runs: descriptive summaries and Student-t confidence intervals.

Hand-written so that the core needs nothing beyond torch and numpy; checked against tabulated
values in tests/test_stats.py.
"""

import math
from dataclasses import dataclass


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


def t_quantile(p, df):
    """The t with P(T <= t) = p, by bisection (monotone, so it always converges)."""
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def confidence_interval(xs, level=0.95):
    """Two-sided Student-t interval for the mean; (nan, nan) with fewer than two values."""
    n = len(xs)
    if n < 2:
        return math.nan, math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * std(xs) / math.sqrt(n)
    return mean(xs) - half, mean(xs) + half


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
    )

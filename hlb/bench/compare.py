"""Did my change help? Two sets of runs, A (before) and B (after), compared with statistics.

Accuracy moves about 0.1 points from run to run (std 0.11 for recipe 94 on an H100, n=50;
see BENCHMARKS.md), so one run of each proves nothing. When both arms ran the same seeds in the
same order, runs pair up by seed and a paired t-test cancels what the seed alone decides;
otherwise Welch's t-test compares the means. Diverged runs are left out (and counted); a broken
pair is left out of the paired test.
"""

import math
from dataclasses import asdict, dataclass

from hlb.bench.records import number, read_record
from hlb.bench.report import jsonable
from hlb.bench.stats import DiffTest, mean, paired_test, runs_needed, std, welch_test
from hlb.errors import HlbError, UsageError

RUN_KEYS = ("tta_acc", "train_time_s", "seed", "diverged")


@dataclass
class Arm:
    n: int                    # runs that finished
    diverged: int
    acc_mean: float           # fraction correct, as in a record
    acc_std: float
    time_mean: float          # seconds
    time_std: float


@dataclass
class Comparison:
    a: Arm
    b: Arm
    test: str                 # "paired" (same seeds, same order) or "Welch"
    pairs: int                # pairs in the paired test (0 for Welch)
    acc: DiffTest             # B - A in accuracy (fraction)
    time: DiffTest            # B - A in seconds
    runs_needed: float        # runs per arm to detect acc.diff (80% power, 5% level)
    verdict: str


def _get(run, key):
    return run[key] if isinstance(run, dict) else getattr(run, key)


def _arm(runs):
    done = [r for r in runs if not _get(r, "diverged")]
    accs = [_get(r, "tta_acc") for r in done]
    times = [_get(r, "train_time_s") for r in done]
    nan = math.nan
    return Arm(n=len(done), diverged=len(runs) - len(done),
               acc_mean=mean(accs) if done else nan, acc_std=std(accs) if done else nan,
               time_mean=mean(times) if done else nan, time_std=std(times) if done else nan)


def _same_seeds(a_results, b_results):
    seeds_a = [_get(r, "seed") for r in a_results]
    return bool(seeds_a) and seeds_a == [_get(r, "seed") for r in b_results]


def _points(x):
    return f"{100 * x:+.2f}"


def _seconds(x):
    return f"{x:+.3f}"


def _p(p):
    if math.isnan(p):
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _difference(t, fmt, unit, pairs=0):
    how = f"paired over {pairs} seed{'s' * (pairs != 1)}" if t.test == "paired" else t.test
    if math.isnan(t.p_value):
        return f"{fmt(t.diff)} {unit} (too few runs for a test, {how})"
    lo, hi = t.ci95
    return f"{fmt(t.diff)} {unit} (95% CI {fmt(lo)} to {fmt(hi)}, {_p(t.p_value)}, {how})"


def _verdict(c, name_a="A", name_b="B"):
    """One line; "no detectable difference" whenever the 95% interval spans zero."""
    if math.isnan(c.acc.p_value):
        found = (f"{c.pairs} pair{'s' * (c.pairs != 1)} without a diverged run"
                 if c.test == "paired" else f"{name_a} has {c.a.n}, {name_b} has {c.b.n}")
        return f"not enough runs to tell: a test needs 2 finished runs a side ({found})"
    lo, hi = c.acc.ci95
    said = _difference(c.acc, _points, "points", c.pairs)
    if lo <= 0 <= hi:
        if c.runs_needed == math.inf:
            return f"no detectable difference: {said}; the observed difference is zero"
        return (f"no detectable difference: {said}; about {c.runs_needed} runs per arm would "
                f"detect a difference this size")
    better = "better" if c.acc.diff > 0 else "worse"
    return f"{name_b} is {better} than {name_a}: {said}"


def compare(a_results, b_results, paired=None):
    """Compare runs B against runs A (records as dicts or objects with RUN_KEYS fields).

    paired=None decides by the seeds: paired when both arms have the same seeds in the same
    order, Welch otherwise. True insists on pairing (an error if the seeds differ); False
    forces Welch.
    """
    same = _same_seeds(a_results, b_results)
    if paired and not same:
        raise UsageError("a paired comparison needs the same seeds in the same order in both "
                         "arms; run both with the same --seed and --runs")
    paired = same if paired is None else paired
    a, b = _arm(a_results), _arm(b_results)
    if paired:
        # A run that diverged breaks its pair; the other pairs still count.
        pairs = [(x, y) for x, y in zip(a_results, b_results)
                 if not _get(x, "diverged") and not _get(y, "diverged")]
        done_a, done_b = [x for x, _ in pairs], [y for _, y in pairs]
    else:
        pairs = []
        done_a, done_b = ([r for r in arm if not _get(r, "diverged")]
                          for arm in (a_results, b_results))
    test = paired_test if paired else welch_test
    acc_a, acc_b = [_get(r, "tta_acc") for r in done_a], [_get(r, "tta_acc") for r in done_b]
    acc = test(acc_a, acc_b)
    time = test([_get(r, "train_time_s") for r in done_a],
                [_get(r, "train_time_s") for r in done_b])
    if math.isnan(acc.p_value):
        needed = math.nan
    elif paired:
        needed = runs_needed(acc.diff, None, None,
                             paired_std=std([y - x for x, y in zip(acc_a, acc_b)]))
    else:
        needed = runs_needed(acc.diff, a.acc_std, b.acc_std)
    c = Comparison(a=a, b=b, test="paired" if paired else "Welch", pairs=len(pairs),
                   acc=acc, time=time, runs_needed=needed, verdict="")
    c.verdict = _verdict(c)
    return c


def comparison_lines(c, name_a="A", name_b="B"):
    """A small table of the two arms, the differences B - A, and the verdict last."""
    width = max(3, len(name_a), len(name_b))
    lines = [f"{'arm':<{width}}  {'n':>4}  {'diverged':>8}  {'TTA accuracy (%)':>16}  "
             f"{'time (s)':>15}"]
    for name, arm in ((name_a, c.a), (name_b, c.b)):
        acc = f"{100 * arm.acc_mean:.2f} ± {100 * arm.acc_std:.2f}"
        time = f"{arm.time_mean:.3f} ± {arm.time_std:.3f}"
        lines.append(f"{name:<{width}}  {arm.n:>4}  {arm.diverged:>8}  {acc:>16}  {time:>15}")
    lines.append(f"accuracy {name_b} - {name_a}: "
                 f"{_difference(c.acc, _points, 'points', c.pairs)}")
    lines.append(f"time     {name_b} - {name_a}: {_difference(c.time, _seconds, 's', c.pairs)}")
    lines.append(_verdict(c, name_a, name_b))
    return lines


def comparison_dict(c):
    """The comparison as plain JSON values (accuracy as a fraction, time in seconds)."""
    return jsonable({"format": "hlb-cifar10 comparison v1", **asdict(c)})


def load_record(path):
    """Read a record written by `main.py --json` (hlb.bench.report.record_dict) and check
    its runs."""
    record = read_record(path)
    runs = record["runs"]
    for i, run in enumerate(runs):
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise HlbError(f"{path} is not an hlb record: run {i} lacks {', '.join(missing)}")
        if not run["diverged"] and any(math.isnan(number(run[k]))
                                       for k in ("tta_acc", "train_time_s")):
            raise HlbError(f"{path}: run {i} finished but has no number for tta_acc or "
                           f"train_time_s")
    return record


def compare_records(path_a, path_b, paired=None):
    """Compare the runs of two records (B against A)."""
    return compare(load_record(path_a)["runs"], load_record(path_b)["runs"], paired)

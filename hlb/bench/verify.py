"""Checking a claim: `hlb verify RECORD.json` runs a record's recipe again and judges it.

A claim is a record: main.py's (its runs claim an accuracy), a compare record (arm b is the
entry, arm a its baseline: an accuracy and a time ratio), or a verification record (its rerun
and its baseline claim what they measured). Before any training the claim must add up
(hlb.bench.records.check_integrity), be this code's (hlb.bench.code) and of the same data.
Then the entry and a baseline run interleaved, run by run, with the claim's seeds, and:
- accuracy: the rerun's mean with its 95% interval; whether it is consistent with the claimed
  mean (Welch's two-sample test, p >= ALPHA); whether it clears the recipe's target (the
  one-sided t-test of hlb.bench.stats.above_target, p < ALPHA);
- time: the measured ratio entry / baseline (paired by seed, hlb.bench.stats.ratio_of_means)
  and the claimed one, which must not lie below its interval: a claim may be slower than this
  rerun, never faster. Absolute seconds are printed, never judged (they do not carry from one
  machine to the next), and a ratio is judged only against runs on the same kind of device;
- the verdict: "verified", or "not reproduced" with every reason.
"""

import hashlib
import math
import shlex

from hlb.bench.code import describe, running_code
from hlb.bench.records import VERIFICATION_FORMAT as FORMAT
from hlb.bench.records import (check_fields, check_integrity, check_record, load_json, same,
                               whole)
from hlb.bench.report import environment, jsonable, record_dict
from hlb.bench.resume import kind_of, same_code
from hlb.bench.stats import (above_target, confidence_interval, mean, ratio_of_means, std,
                             welch_from_summaries)
from hlb.bench.work import run_work
from hlb.errors import HlbError, UsageError
from hlb.recipes import get_recipe

ALPHA = 0.05
_HINT = "verify a record written by main.py --json, compare --json or verify --json"


def parts(data):
    """[(record, label)]: the entry's, then its baseline's when the claim has one."""
    kind = kind_of(data)
    if kind == "verification":
        return [(data.get("entry"), " entry"), (data.get("baseline"), " baseline")]
    if kind == "compare":
        return [(data.get("b"), " arm b"), (data.get("a"), " arm a")]
    return [(data, "")]


def _check_part(record, where):
    check_record(record, where)
    check_fields(record, where, _HINT)
    if not isinstance(record["recipe"].get("name"), str):
        raise HlbError(f"{where}: its recipe has no name (edited?); {_HINT}")
    return check_integrity(record, where, _HINT)


def read_claim(path):
    """(claim data, [(record, its RunResults)] of the entry and any baseline, the file's
    sha256); a file that is not a claim, is cut short or does not add up is one HlbError."""
    data, raw = load_json(path, with_bytes=True)
    return data, check_claim(data, path), hashlib.sha256(raw).hexdigest()


def check_claim(data, path):
    """[(record, its RunResults)] of a claim's entry and any baseline, each checked whole (a
    verification's answer recomputed from them too); else one HlbError line."""
    if not isinstance(data, dict):
        raise HlbError(f"{path} is not an hlb record (not a JSON object); {_HINT}")
    if kind_of(data) == "sweep":
        raise HlbError(f"{path} is a sweep record: verify a record of one recipe; {_HINT}")
    checked = [(record, _check_part(record, f"{path}{label}")) if isinstance(record, dict)
               else _missing(path, label) for record, label in parts(data)]
    if kind_of(data) == "verification":
        check_verification(data, checked, path)
    return checked


def _missing(path, label):
    raise HlbError(f"{path}:{label} is missing (cut short or edited?); {_HINT}")


def check_code(data, path):
    """Refuse (UsageError, exit 2) a claim that other code made: what the rerun would test is
    not what ran."""
    entry = parts(data)[0][0]
    ours = running_code()
    if not same_code(entry, ours):
        theirs = entry["environment"].get("code") or {
            "git_commit": entry["environment"].get("git_commit")}
        raise UsageError(f"{path}: the code differs: {describe(theirs)} made it, "
                         f"{describe(ours)} is here; check out its commit (and apply its "
                         "diff, from the record) to verify it")


def check_data(data, path, fingerprint):
    """Refuse a claim made on other data, before any training."""
    theirs = parts(data)[0][0]["data_fingerprint"]
    if theirs != fingerprint:
        raise UsageError(f"{path}: the data differs: the claim ran on fingerprint {theirs}, "
                         f"this data is {fingerprint}; give the --data-dir it ran on")


def _times(entry, baseline):
    """The entry's and the baseline's times over the seeds both finished, paired."""
    base = {r.seed: r.train_time_s for r in baseline if not r.diverged}
    pairs = [(r.train_time_s, base[r.seed]) for r in entry
             if not r.diverged and r.seed in base]
    return [a for a, _ in pairs], [b for _, b in pairs]


def claimed(path, sha256, checked):
    """What a claim says, as the verification record keeps it."""
    (entry, results), *rest = checked
    accs = [r.tta_acc for r in results if not r.diverged]
    if len(accs) < 2:
        raise HlbError(f"{path}: {len(accs)} finished run(s) claim no mean that a test can "
                       f"check (two or more are needed); {_HINT}")
    ratio = ratio_of_means(*_times(results, rest[0][1])) if rest else (math.nan, None)
    return jsonable({
        "path": str(path), "sha256": sha256, "recipe": entry["recipe"]["name"],
        "overrides": entry["overrides"], "seed": entry["seed"],
        "baseline": record_flags(rest[0][0]) if rest else None,
        "n": len(accs), "acc_mean": mean(accs) if accs else math.nan, "acc_std": std(accs),
        "time_ratio": ratio[0], "device": entry["device"],
        "gpu": entry["environment"].get("gpu"), "code": entry["environment"].get("code"),
        "date": entry["environment"].get("date")})


def record_flags(record):
    """A record's recipe and --set values as the flags that run it again (as `--baseline`
    takes them)."""
    return " ".join(["--recipe", shlex.quote(record["recipe"]["name"])]
                    + [f"--set {shlex.quote(o)}" for o in record["overrides"]])


# Beside an entry of this many times less work a run, recipe 94 is no baseline on a CPU: at
# 0.064 steps/s on 2 cores (an hour a run) it would turn minutes of checking into hours.
CPU_BASELINE_WORK_RATIO = 10


def default_baseline(own, entry, device, work=run_work):
    """(flags, why) of the baseline when --baseline is not given: the claim's `own` flags
    when it has a baseline; else recipe 94, unless on a CPU it is more than
    CPU_BASELINE_WORK_RATIO times the work a run of the `entry` Recipe (a smoke claim): then
    the entry's recipe as named, without its --set values, and `why` says so in one line
    that names --baseline (None otherwise)."""
    if own:
        return own, None
    if device != "cpu" or entry.name == "94":
        return "--recipe 94", None
    ratio = work(get_recipe("94")).run / work(entry).run
    if ratio <= CPU_BASELINE_WORK_RATIO:
        return "--recipe 94", None
    return f"--recipe {shlex.quote(entry.name)}", (
        f"not recipe 94: a run of it is {ratio:.0f} times the entry's work, hours on a CPU; "
        "--baseline FLAGS chooses another")


def judge(claim, target, entry, baseline, device):
    """The answer (see the module's text) for `claim` (as `claimed` keeps it) from the rerun's
    RunResults of the entry and the baseline, on `device` (its kind)."""
    done = [r.tta_acc for r in entry if not r.diverged]
    n, m = len(done), mean(done) if done else math.nan
    welch = welch_from_summaries((claim["n"], claim["acc_mean"], claim["acc_std"]),
                                 (n, m, std(done)))
    _, above = above_target(done, target)
    ratio, ratio_ci = ratio_of_means(*_times(entry, baseline))
    claimed_ratio = claim["time_ratio"]
    judged = (claimed_ratio is not None and claim["device"] == device
              and not math.isnan(ratio_ci[0]))
    reasons = []
    if len(done) < len(entry):
        reasons.append(f"{len(entry) - n} of {len(entry)} reruns diverged")
    if n < 2:
        reasons.append(f"{n} finished rerun(s): the tests need two or more")
    else:
        if not welch.p_value >= ALPHA:
            reasons.append(f"the rerun's mean accuracy {100 * m:.2f}% (n={n}) is not the "
                           f"claimed {100 * claim['acc_mean']:.2f}% (n={claim['n']}): Welch "
                           f"p={welch.p_value:.2g} < {ALPHA}")
        if not above < ALPHA:
            reasons.append(f"the rerun's mean accuracy {100 * m:.2f}% does not clear the "
                           f"target {100 * target:.2f}% (one-sided p={above:.2g}, n={n}; more "
                           "runs may tell)")
    if judged and claimed_ratio < ratio_ci[0]:
        reasons.append(f"the claimed time ratio {claimed_ratio:.3f} lies below the measured "
                       f"{ratio:.3f} (95% CI {ratio_ci[0]:.3f} to {ratio_ci[1]:.3f}): the claim "
                       "is faster than this rerun")
    entry_s, base_s = _times(entry, baseline)
    return jsonable({
        "accuracy": {"n": n, "mean": m, "ci95": confidence_interval(done),
                     "claimed_n": claim["n"], "claimed_mean": claim["acc_mean"],
                     "welch_p": welch.p_value, "target": target, "above_target_p": above},
        "time": {"device": device, "entry_mean_s": mean(entry_s) if entry_s else math.nan,
                 "baseline_mean_s": mean(base_s) if base_s else math.nan, "ratio": ratio,
                 "ratio_ci95": ratio_ci, "claimed_ratio": claimed_ratio, "judged": judged},
        "verdict": "not reproduced" if reasons else "verified", "reasons": reasons})


def target_of(entry):
    target = entry["recipe"].get("target")
    return target if isinstance(target, (int, float)) and 0 <= target <= 1 else math.nan


def verification_dict(claim, entry, baseline, argv):
    """The verification record (format FORMAT) of a rerun: the claim, the entry's and the
    baseline's records (hlb.bench.runs.Record), and the answer."""
    entry_data, baseline_data = record_dict(entry, argv), record_dict(baseline, argv)
    result = judge(claim, target_of(entry_data), entry.results, baseline.results,
                   entry.device)
    return jsonable({"format": FORMAT, "argv": argv, "environment": environment(),
                     "claim": claim, "entry": entry_data, "baseline": baseline_data,
                     "result": result})


def check_verification(data, checked, path):
    """A verification record's answer must follow from its claim and its runs: an edited
    verdict, interval or ratio is refused in one line."""
    claim = data.get("claim")
    keys = ("n", "acc_mean", "acc_std", "time_ratio", "device")
    if not isinstance(claim, dict) or not all(k in claim for k in keys) or not whole(
            claim["n"]) or len(checked) != 2:
        raise HlbError(f"{path}: its claim is not as verify writes it (edited?); {_HINT}")
    (entry, results), (_, base_results) = checked
    try:
        expected = judge(claim, target_of(entry), results, base_results, entry["device"])
    except (TypeError, ValueError, ZeroDivisionError):
        raise HlbError(f"{path}: its claim's numbers are not numbers (edited?); {_HINT}") \
            from None
    if not same(data.get("result"), expected):
        raise HlbError(f"{path}: its result does not follow from its claim and its runs "
                       f"(edited?); {_HINT}")


def _percent(x):
    return "n/a" if x is None else f"{100 * x:.2f}%"


def result_lines(data):
    """What verify prints once the reruns end: the claim, accuracy, time, the verdict."""
    claim, result = data["claim"], data["result"]
    acc, time = result["accuracy"], result["time"]
    lo, hi = acc["ci95"] if acc["ci95"][0] is not None else ("n/a", "n/a")
    ci = f"{100 * lo:.2f} to {100 * hi:.2f}" if lo != "n/a" else "n/a"
    lines = [f"claim: {claim['path']} (recipe {' '.join([claim['recipe'], *claim['overrides']])}"
             f"; {claim['n']} runs on {claim['gpu'] or claim['device']}, "
             f"{describe(claim['code'])}): mean {_percent(claim['acc_mean'])}",
             f"accuracy: rerun mean {_percent(acc['mean'])} (95% CI {ci}, n={acc['n']}); "
             f"against the claim: Welch p={_p(acc['welch_p'])}; above the target "
             f"{_percent(acc['target'])}: one-sided p={_p(acc['above_target_p'])}"]
    line = (f"time: entry {_s(time['entry_mean_s'])}, baseline {_s(time['baseline_mean_s'])}"
            f" (seconds are not judged across machines); ratio {_r(time['ratio'])}")
    if time["ratio_ci95"][0] is not None:
        line += f" (95% CI {_r(time['ratio_ci95'][0])} to {_r(time['ratio_ci95'][1])})"
    line += (f", claimed {_r(time['claimed_ratio'])}" if time["claimed_ratio"] is not None
             else ", none claimed")
    lines.append(line + ("" if time["judged"] or time["claimed_ratio"] is None
                         else " (not judged: another kind of device)"))
    lines.append(f"verdict: {result['verdict']}"
                 + "".join(f"\n  - {reason}" for reason in result["reasons"]))
    return lines


def _p(p):
    return "n/a" if p is None else f"{p:.3g}"


def _s(seconds):
    return "n/a" if seconds is None else f"{seconds:.3f} s"


def _r(ratio):
    return "n/a" if ratio is None else f"{ratio:.3f}"

"""Print the comparison table of scripts/gpu_check.sh: our records against the references' logs.

    python scripts/gpu_summary.py [ours-LABEL.json ...] [--reference [LABEL=]LOG ...]
                                  [--sweep SWEEP.json] [--tune TUNE.json]
                                  [--clocks CLOCKS.csv --stages STAGES.txt]
                                  [--target ACC]

A reference log is the output of an airbench-style script (airbench94_muon, hiverge's
cifar10_speedrun): a `|`-separated table whose final row per run has "eval" in its second
column, TTA accuracy in the next-to-last column and the run's seconds in the last. Its first
such row is the untimed warm-up and is skipped. Each of our records gets its time ratio to
every reference; a record of accuracy mode (--accuracy-only) gets its accuracy alone.

The clocks file holds nvidia-smi samples (csv, noheader, nounits) below a first line naming
the fields: timestamp and any of clocks.sm, utilization.gpu, power.draw, temperature.gpu and
the active clock-event (throttle) reasons. The stages file has lines of
"YYYY/MM/DD HH:MM:SS.fff LABEL", each marking when a stage began.
"""

import argparse
import json
import math
import statistics
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.stats import above_target, confidence_interval, mean, std  # noqa: E402


def _table_rows(path):
    """The cells of each `|`-separated row of a reference log with at least 4 columns."""
    for line in Path(path).read_text(errors="replace").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4:
            yield cells


def reference_runs(path):
    accs, times = [], []
    for cells in _table_rows(path):
        if cells[1] == "eval":
            try:
                accs.append(float(cells[-2]))
                times.append(float(cells[-1]))
            except ValueError:
                continue
    return accs[1:], times[1:]          # the first is the warm-up run


def reference_epochs(path):
    """{epoch (from 1): [seconds to its end, one per timed run]} from a reference log whose
    epoch column counts from 0; the warm-up run is skipped."""
    by_epoch, run = {}, None
    for cells in _table_rows(path):
        run = cells[0] or run
        if run in (None, "run", "warmup") or not cells[1].isdigit():
            continue
        try:
            by_epoch.setdefault(int(cells[1]) + 1, []).append(float(cells[-1]))
        except ValueError:
            continue
    return by_epoch


def our_epochs(record):
    """{epoch: [seconds to its end, one per run that reached it]} from a record's rows."""
    by_epoch = {}
    for row in record.get("epochs", []):
        by_epoch.setdefault(row["epoch"], []).append(row["time_s"])
    return by_epoch


def epoch_line(name, ours, reference, ref_label="reference", last=3):
    """Mean time to the end of the first epochs, ours against the reference: a comparison
    that holds even when runs were cut short or failed later."""
    parts = [f"{e}: {mean(ours[e]):.3f} vs {mean(reference[e]):.3f} "
             f"({mean(ours[e]) / mean(reference[e]):.2f})"
             for e in sorted(ours.keys() & reference.keys())[:last]]
    return (f"{name:<10} seconds to the end of epoch (ours vs {ref_label}, ratio) "
            + "; ".join(parts)) if parts else None


def describe(name, accs, times, target=None):
    """One line of accuracy and time (times None: accuracy alone); with `target`, a second:
    the one-sided t-test of "the mean accuracy is above target", the claim a recipe is
    promoted on."""
    if not accs:
        return f"{name:<10} no finished runs"
    lo, hi = confidence_interval(accs)
    line = (f"{name:<10} n={len(accs):<4} acc mean {mean(accs):.4f} std {std(accs):.4f} "
            f"min {min(accs):.4f} max {max(accs):.4f} CI95 [{lo:.4f}, {hi:.4f}] | ")
    line += (f"time mean {mean(times):.3f} std {std(times):.3f} "
             f"min {min(times):.3f} max {max(times):.3f} s") if times is not None else \
        "time not reported (accuracy mode)"
    if target is not None and len(accs) >= 2:
        t, p = above_target(accs, target)
        line += (f"\n{name:<10} mean above {target:.2%}: t={t:.2f}, one-sided p={p:.3g} "
                 f"(n={len(accs)})")
    return line


# nvidia-smi's clock-event (throttle) reason bits; "idle" is left out of the report.
SLOWDOWNS = {0x2: "application clocks", 0x4: "software power cap", 0x8: "hardware slowdown",
             0x10: "sync boost", 0x20: "software thermal", 0x40: "hardware thermal",
             0x80: "hardware power brake", 0x100: "display clocks"}


def _time(text):
    return datetime.strptime(text.strip(), "%Y/%m/%d %H:%M:%S.%f")


def clock_samples(path):
    """[{field: value}] of nvidia-smi samples below a first line that names the fields.

    The timestamp becomes a datetime, the reasons (a field ending in "reasons.active") an int
    of bits, the rest floats; a cell that does not parse ("[N/A]") is left out.
    """
    lines = Path(path).read_text(errors="replace").splitlines()
    fields = [f.strip() for f in lines[0].split(",")] if lines else []
    samples = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(fields):
            continue
        sample = {}
        for field, cell in zip(fields, cells):
            try:
                sample["reasons" if field.endswith("reasons.active") else field] = (
                    _time(cell) if field == "timestamp"
                    else int(cell, 16) if field.endswith("reasons.active") else float(cell))
            except ValueError:
                continue
        if "timestamp" in sample:
            samples.append(sample)
    return samples


def stage_starts(path):
    starts = []
    for line in Path(path).read_text().splitlines():
        day, clock, label = line.split(maxsplit=2)
        starts.append((_time(f"{day} {clock}"), label))
    return starts


def _describe_clocks(group):
    def values(field):
        return [s[field] for s in group if field in s]

    parts = []
    if clocks := values("clocks.sm"):
        parts.append(f"SM clock median {statistics.median(clocks):.0f} MHz (min "
                     f"{min(clocks):.0f}, max {max(clocks):.0f})")
    if busy := values("utilization.gpu"):
        parts.append(f"utilization mean {statistics.mean(busy):.0f}%")
    if watts := values("power.draw"):
        parts.append(f"power max {max(watts):.0f} W")
    if heat := values("temperature.gpu"):
        parts.append(f"temperature max {max(heat):.0f} C")
    if reasons := values("reasons"):
        seen = {bit: sum(bool(r & bit) for r in reasons) for bit in SLOWDOWNS}
        parts.append("slowdowns: " + (", ".join(f"{SLOWDOWNS[bit]} {n / len(reasons):.0%}"
                                                for bit, n in seen.items() if n) or "none"))
    return ", ".join(parts)


def clock_lines(samples, starts):
    """One line per stage: the SM clock, utilization, power, heat and slowdowns seen."""
    if not samples:
        return ["no clock samples (the nvidia-smi query failed)"]
    bounds = starts + [(datetime.max, "")]
    lines = []
    for (begin, name), (end, _) in zip(bounds, bounds[1:]):
        group = [s for s in samples if begin <= s["timestamp"] < end]
        if group:
            lines.append(f"{name:<12} {len(group):>4} samples: {_describe_clocks(group)}")
    return lines


def label(path, record):
    """The variant's label from gpu_check.sh's file name (ours-LABEL.json), else the recipe."""
    stem = Path(path).stem
    return stem[len("ours-"):] if stem.startswith("ours-") else record["recipe"]["name"]


def _reference(text):
    """A --reference: (its label, its log's path); a bare path is labelled "reference"."""
    label, sep, path = text.partition("=")
    return (label, path) if sep else ("reference", text)


def sweep_lines(path):
    """A sweep record's ranked table, a line per cell: n, mean accuracy, cell - base."""
    record = json.loads(Path(path).read_text())
    return [f"sweep {Path(path).stem}: {record.get('correction', '')}"] + _table_lines(record)


def _table_lines(record):
    """The ranked table of a sweep record (or a tune record's confirmation), a line a cell."""
    lines = []
    for row in record.get("table", []):
        def diff(test, scale, digits):
            if not test:
                return ""
            lo, hi = test["ci95"]
            if lo is None:
                return f"{scale * test['diff']:+.{digits}f}"
            return (f"{scale * test['diff']:+.{digits}f} ({scale * lo:+.{digits}f} to "
                    f"{scale * hi:+.{digits}f})")
        acc = "" if row["acc_mean"] is None else f"{100 * row['acc_mean']:.2f}%"
        lines.append(f"  {row['name']:<28} n={row['n']:<3} acc {acc:<7} "
                     f"d_acc {diff(row['acc'], 100, 2):<24} d_time {diff(row['time'], 1, 3):<26}"
                     f" {row['verdict']}" + (" (dropped)" if row.get("dropped") else ""))
    return lines


def tune_lines(path, best=5):
    """A tune record in a few lines: the study and its trials by state, the best trials
    (their values, n, mean accuracy with its interval, GFLOPs a run) and the confirmation."""
    record = json.loads(Path(path).read_text())
    trials = record.get("trials", [])
    states = {}
    for trial in trials:
        states[trial["state"]] = states.get(trial["state"], 0) + 1
    lines = [f"tune {record.get('study')}: objective {record.get('objective')}, "
             f"{len(trials)} trials ("
             + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
             + f"), space {' '.join(record.get('space', []))}, "
             f"wall {record.get('wall_s') or 0:.0f} s"]
    by_number = {t["number"]: t for t in trials}
    for number in record.get("best_trials", [])[:best]:
        trial = by_number.get(number)
        if trial is None or trial["acc_mean"] is None:
            continue
        lo, hi = trial["acc_ci95"]
        interval = "" if lo is None else f" [{100 * lo:.2f}, {100 * hi:.2f}]"
        gflops = "" if trial.get("gflops") is None else f", {trial['gflops']:.0f} GFLOP a run"
        lines.append(f"  trial {number:<4} n={trial['n']:<2} acc {100 * trial['acc_mean']:.2f}%"
                     f"{interval}{gflops}: {' '.join(trial['values'])}")
    confirmation = record.get("confirmation") or {}
    if confirmation.get("table"):
        lines.append("  confirmation on fresh seeds, beside the base:")
        lines += ["  " + line for line in _table_lines(confirmation)]
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ours", nargs="*", help="records written by main.py --json")
    parser.add_argument("--reference", action="append", default=[], metavar="[LABEL=]LOG",
                        help="a reference's log (repeatable)")
    parser.add_argument("--sweep", help="a sweep record written by main.py sweep --json")
    parser.add_argument("--tune", help="a tune record written by main.py tune --json")
    parser.add_argument("--clocks", help="nvidia-smi samples taken during the check")
    parser.add_argument("--stages", help="when each stage of the check began")
    parser.add_argument("--target", type=float, default=0.94,
                        help="accuracy whose one-sided t-test is printed (default 0.94)")
    args = parser.parse_args()
    references = [(label, *reference_runs(path), reference_epochs(path))
                  for label, path in map(_reference, args.reference)]
    for path in args.ours:
        record = json.loads(Path(path).read_text())
        runs = [r for r in record["runs"] if not r["diverged"]]
        accs = [r["tta_acc"] for r in runs]
        timed = not record.get("accuracy_only")
        times = [r["train_time_s"] for r in runs] if timed else None
        env = record["environment"]
        name = label(path, record)
        flags = " ".join(record.get("argv") or [])
        print(f"{name}: {flags}")
        print(f"  card {env['gpu']}, torch {env['torch']}, cuda {env['cuda']}, {env['date']}; "
              f"warm-up {record['warmup_s']:.1f} s, peak memory "
              f"{record['summary']['peak_mem_reserved'] / 2**20:.0f} MiB reserved"
              + (f"; stopped: {record['stopped']}" if record.get("stopped") else "")
              + (f"; fallback: {record['fallback']}" if record.get("fallback") else ""))
        print(describe(name, accs, times, args.target))
        for ref, _, ref_times, ref_epochs in references if timed else ():
            by_epoch = epoch_line(name, our_epochs(record), ref_epochs, ref)
            if by_epoch:
                print(by_epoch)
            if times and ref_times and math.isfinite(mean(times) / mean(ref_times)):
                print(f"time ratio {name}/{ref}: {mean(times) / mean(ref_times):.3f}")
    for ref, ref_accs, ref_times, _ in references:
        print(describe(ref, ref_accs, ref_times, args.target))
    if args.sweep:
        print("\n".join(sweep_lines(args.sweep)))
    if args.tune:
        print("\n".join(tune_lines(args.tune)))
    if args.clocks and args.stages:
        print("GPU clocks by stage (nvidia-smi every 0.5 s):")
        print("\n".join(clock_lines(clock_samples(args.clocks), stage_starts(args.stages))))


if __name__ == "__main__":
    main()

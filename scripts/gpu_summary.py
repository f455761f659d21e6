"""Print the comparison table of scripts/gpu_check.sh: our records against a reference log.

    python scripts/gpu_summary.py [ours-LABEL.json ...] [--reference REFERENCE.log]

The reference log is the output of an airbench-style script: a `|`-separated table whose
final row per run has "eval" in its second column, TTA accuracy in the next-to-last column
and the run's seconds in the last. Its first such row is the untimed warm-up and is skipped.
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.stats import confidence_interval, mean, std  # noqa: E402


def reference_runs(path):
    accs, times = [], []
    for line in Path(path).read_text(errors="replace").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[1] == "eval":
            try:
                accs.append(float(cells[-2]))
                times.append(float(cells[-1]))
            except ValueError:
                continue
    return accs[1:], times[1:]          # the first is the warm-up run


def describe(name, accs, times):
    if not accs:
        return f"{name:<10} no finished runs"
    lo, hi = confidence_interval(accs)
    return (f"{name:<10} n={len(accs):<4} acc mean {mean(accs):.4f} std {std(accs):.4f} "
            f"min {min(accs):.4f} max {max(accs):.4f} CI95 [{lo:.4f}, {hi:.4f}] | "
            f"time mean {mean(times):.3f} std {std(times):.3f} "
            f"min {min(times):.3f} max {max(times):.3f} s")


def label(path, record):
    """The variant's label from gpu_check.sh's file name (ours-LABEL.json), else the recipe."""
    stem = Path(path).stem
    return stem[len("ours-"):] if stem.startswith("ours-") else record["recipe"]["name"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ours", nargs="*", help="records written by main.py --json")
    parser.add_argument("--reference")
    args = parser.parse_args()
    ref_accs, ref_times = reference_runs(args.reference) if args.reference else ([], [])
    for path in args.ours:
        record = json.loads(Path(path).read_text())
        runs = [r for r in record["runs"] if not r["diverged"]]
        accs = [r["tta_acc"] for r in runs]
        times = [r["train_time_s"] for r in runs]
        env = record["environment"]
        name = label(path, record)
        flags = " ".join(record.get("argv") or [])
        print(f"{name}: {flags}")
        print(f"  card {env['gpu']}, torch {env['torch']}, cuda {env['cuda']}, {env['date']}; "
              f"warm-up {record['warmup_s']:.1f} s, peak memory "
              f"{record['summary']['peak_mem_reserved'] / 2**20:.0f} MiB reserved"
              + (f"; stopped: {record['stopped']}" if record.get("stopped") else ""))
        print(describe(name, accs, times))
        if times and ref_times:
            ratio = mean(times) / mean(ref_times)
            if math.isfinite(ratio):
                print(f"time ratio {name}/reference: {ratio:.3f}")
    if args.reference:
        print(describe("reference", ref_accs, ref_times))


if __name__ == "__main__":
    main()

"""Print the comparison table of scripts/gpu_check.sh: ours (a record) against a reference log.

    python scripts/gpu_summary.py OURS.json [--reference REFERENCE.log]

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ours")
    parser.add_argument("--reference")
    args = parser.parse_args()
    record = json.loads(Path(args.ours).read_text())
    runs = [r for r in record["runs"] if not r["diverged"]]
    accs = [r["tta_acc"] for r in runs]
    times = [r["train_time_s"] for r in runs]
    env = record["environment"]
    print(f"card {env['gpu']}, torch {env['torch']}, cuda {env['cuda']}, {env['date']}")
    print(f"ours: recipe {record['recipe']['name']}, warm-up {record['warmup_s']:.1f} s, "
          f"peak memory {record['summary']['peak_mem_reserved'] / 2**20:.0f} MiB reserved")
    print(describe("ours", accs, times))
    if args.reference:
        ref_accs, ref_times = reference_runs(args.reference)
        print(describe("reference", ref_accs, ref_times))
        if times and ref_times:
            ratio = mean(times) / mean(ref_times)
            print(f"time ratio ours/reference: {ratio:.3f}" if math.isfinite(ratio) else "")


if __name__ == "__main__":
    main()

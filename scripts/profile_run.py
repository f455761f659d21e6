"""Where one run's time goes: a warm-up, then one training run under torch.profiler.

    python scripts/profile_run.py [--recipe 94muon] [--set key=value ...] [--data-dir DIR]
                                  [--device cuda|cpu]

Prints the run's timed seconds and wall seconds under the profiler, the kernels launched per
training step, the share of the wall time the GPU spent in kernels (near 1: the GPU is the
limit; far below: the host is, launching kernels), and the top operations by device time and
by host time. The profiler adds host time of its own, so compare its figures with each
other, not with an unprofiled run's time.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.errors import HlbError  # noqa: E402
from hlb.runs import Bench, Quiet, load_data, prepare  # noqa: E402
from hlb.train import train_run  # noqa: E402


def kernels(prof):
    """(count, busy microseconds) of the device kernels the profiler saw."""
    spans = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(spans), sum(e.time_range.elapsed_us() for e in spans)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="94")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--rows", type=int, default=20, help="rows per table (default 20)")
    args = p.parse_args(argv)
    try:
        recipe, device = prepare(args.recipe, 1, args.device, args.set)
        bench = Bench(recipe, device, load_data(args.data_dir), seed=0)
    except HlbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    bench.warmup(Quiet())
    cuda = bench.cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        tick = time.perf_counter()
        result = train_run(recipe, bench.data, bench.net, device, seed=1, forward=bench.forward,
                           step=bench.step)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - tick
    steps = recipe.total_steps()
    lines = [f"recipe {recipe.name} on {device}: {steps} steps, TTA accuracy "
             f"{result.tta_acc:.4f}, timed {result.train_time_s:.3f} s, wall {wall:.3f} s "
             f"(untimed evaluation included; profiler on)"]
    if cuda:
        count, busy_us = kernels(prof)
        lines.append(f"kernels: {count} ({count / steps:.0f} per training step, evaluation "
                     f"included); GPU busy {busy_us / 1e6:.3f} s = "
                     f"{busy_us / 1e6 / wall:.0%} of the wall time")
    table = prof.key_averages()
    sorts = (["self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]
    for sort in sorts:
        lines.append(f"== top {args.rows} by {sort.split('_')[1]} time (self)")
        lines.append(table.table(sort_by=sort, row_limit=args.rows))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where one run's time goes: a warm-up, then one training run under torch.profiler.

    python scripts/profile_run.py [--recipe 94] [--set key=value ...] [--data-dir DIR]
                                  [--device cuda|cpu]

Prints the run's timed seconds and wall seconds under the profiler, the kernels launched per
training step, the share of the wall time the GPU spent in kernels (near 1: the GPU is the
limit; far below: the host is, launching kernels), the GPU's idle gaps by length, the kernel
time by kind, and the top operations by device time and by host time. The profiler adds host
time of its own, so compare its figures with each other, not with an unprofiled run's time.

`profile_reference` does the same for a reference script's `main(run, model)` inside that
script's own process (scripts/gpu_check.sh appends a call to it), so the compiled model is
reused and nothing compiles again.
"""

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.report import Listener  # noqa: E402
from hlb.bench.runs import PreparedRecipe, checked_call, load_data  # noqa: E402
from hlb.errors import HlbError  # noqa: E402

# Kernel name fragments by kind, first match wins; a rough split, by name only.
KINDS = (("copies and fills", ("memcpy", "memset")),
         ("optimizer (multi-tensor)", ("multi_tensor_apply",)),
         ("convolution and matmul (Triton templates)", ("triton_tem",)),
         ("compiled elementwise and reductions (Triton)", ("triton",)),
         ("convolution and matmul", ("conv", "cudnn", "gemm", "xmma", "cutlass", "wgrad",
                                     "dgrad", "fprop", "sm90_", "nchwtonhwc", "nhwctonchw")),
         ("eager elementwise and reductions", ("elementwise", "reduce", "batch_norm",
                                               "pool", "gelu", "softmax", "index")))
GAPS_US = (10, 100, 1000)      # bounds of the idle-gap buckets, microseconds


def kind(name):
    lowered = name.lower()
    for label, fragments in KINDS:
        if any(f in lowered for f in fragments):
            return label
    return "other"


def busy_and_gaps(spans):
    """(busy µs, [gap µs]) of (start, end) kernel spans: their union, and the idle gaps
    between the first start and the last end (kernels on several streams may overlap)."""
    busy, gaps, end = 0.0, [], None
    for start, stop in sorted(spans):
        if end is None or start > end:
            if end is not None:
                gaps.append(start - end)
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, gaps


def gpu_lines(prof, wall, steps):
    """The device side of a profile: kernels, GPU-busy share, idle gaps, time by kind."""
    # Device-side user annotations ("Optimizer.step#Muon.step", a compiled graph's "## Call
    # ... ##") span their kernels and the idle time between them: counted as kernels, they
    # made the reference's GPU look 80% busy with 1.36 s of kernels in a 3.8 s run.
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    if not kernels:
        return ["no device kernels were recorded"]
    spans = [(e.time_range.start, e.time_range.end) for e in kernels]
    busy, gaps = busy_and_gaps(spans)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    graphs = sum(e.name == "cudaGraphLaunch" for e in prof.events())
    per_step = f" ({len(kernels) / steps:.0f} per training step)" if steps else ""
    lines = [f"kernels: {len(kernels)}{per_step}; CUDA graph launches: {graphs}",
             f"GPU busy {busy / 1e6:.3f} s = {busy / 1e6 / wall:.0%} of the wall time, "
             f"{busy / (last - first):.0%} of the span from the first kernel to the last"]
    bounds = (0,) + GAPS_US + (float("inf"),)
    buckets = []
    for lo, hi in zip(bounds, bounds[1:]):
        chosen = [g for g in gaps if lo <= g < hi]
        buckets.append(f"{lo:g}-{hi:g} us: {len(chosen)} gaps, {sum(chosen) / 1e3:.1f} ms")
    lines.append("GPU idle gaps by length (short: launch-bound; long: host work): "
                 + "; ".join(buckets))
    by_kind = {}
    for e in kernels:
        label = kind(e.name)
        by_kind[label] = by_kind.get(label, 0.0) + e.time_range.elapsed_us()
    total = sum(by_kind.values())
    lines.append("kernel time by kind (by name): " + "; ".join(
        f"{label} {us / 1e3:.1f} ms ({us / total:.0%})"
        for label, us in sorted(by_kind.items(), key=lambda item: -item[1])))
    return lines


def profile_call(fn, cuda):
    """(fn's result, wall seconds, profile) of one call of fn under torch.profiler."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        tick = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - tick
    return result, wall, prof


def report(prof, wall, steps, cuda, rows):
    lines = gpu_lines(prof, wall, steps) if cuda else []
    table = prof.key_averages()
    sorts = (["self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]
    for sort in sorts:
        lines.append(f"== top {rows} by {sort.split('_')[1]} time (self)")
        lines.append(table.table(sort_by=sort, row_limit=rows))
    return lines


def profile_reference(main, model, path, steps, rows=15):
    """One more run of a reference script's `main(run, model)` under the profiler; the
    report is printed and written to `path`."""
    cuda = torch.cuda.is_available()
    with contextlib.redirect_stdout(io.StringIO()):    # its table rows would read as a run
        accuracy, wall, prof = profile_call(lambda: main("profile", model), cuda)
    lines = [f"reference: one more run under the profiler, TTA accuracy {accuracy:.4f}, "
             f"wall {wall:.3f} s (per-epoch evaluation and data loading included)"]
    text = "\n".join(lines + report(prof, wall, steps, cuda, rows))
    Path(path).write_text(text + "\n")
    print("== reference profile\n" + text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="94")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--rows", type=int, default=20, help="rows per table (default 20)")
    args = p.parse_args(argv)
    try:
        recipe, device = checked_call(args.recipe, 1, args.device, args.set)
        bench = PreparedRecipe(recipe, device, load_data(args.data_dir), seed=0)
    except HlbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    bench.warmup(Listener())
    cuda = bench.prepared.execution.cuda
    result, wall, prof = profile_call(lambda: bench.prepared.run(seed=1), cuda)
    steps = recipe.total_steps()
    lines = [f"recipe {recipe.name} on {device}: {steps} steps, TTA accuracy "
             f"{result.tta_acc:.4f}, timed {result.train_time_s:.3f} s, wall {wall:.3f} s "
             f"(untimed evaluation included; profiler on)"]
    print("\n".join(lines + report(prof, wall, steps, cuda, args.rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

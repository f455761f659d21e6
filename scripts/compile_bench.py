"""One compile for every variant of the same shapes: what each value-only variant compiles.

    python scripts/compile_bench.py [--keep-cache]

Prepares a small recipe (94's method, narrow, on synthetic data) and then four variants that
change only values (learning rates and momenta, weight decay, label smoothing, the logit
scale, BatchNorm's momentum, the whitening bias's steps, epochs, TTA fraction and weights,
jitter strengths), all in this process, on the CPU, with torch.compile (inductor) forced on
as a GPU would run it. For each variant it prints the Dynamo frames and graphs and the
inductor compiles its preparation and warm-up caused, the warm-up's seconds, and then one
run's seconds for comparison: a variant that compiles nothing warms up in about a run's time.

Inductor's on-disk caches go to a new temporary folder, so the first variant compiles cold
as on a fresh machine (--keep-cache uses torch's usual folder instead). Nothing here is a
timed test; the figures depend on the machine.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import synthetic_cifar  # noqa: E402
from hlb.bench.overrides import override  # noqa: E402
from hlb.execution import execution  # noqa: E402
from hlb.recipes import RECIPES  # noqa: E402
from hlb.train import prepare  # noqa: E402

SMALL = ["train_images=1000", "test_images=500", "batch_size=100", "epochs=2.0",
         "widths=16,32,32", "whiten_init_images=500", "eval_batch_size=250",
         "whiten_bias_epochs=1.0", "augment=crop,flip,jitter"]
VARIANTS = [
    [],
    ["logit_scale=0.15", "label_smoothing=0.1"],
    ["bn_momentum=0.3", "whiten_bias_epochs=0.5", "jitter_brightness=0.2",
     "jitter_contrast=0.05"],
    ["head_lr=0.0005", "bias_lr=0.04", "whiten_bias_lr=0.03", "momentum=0.8",
     "weight_decay=0.002", "muon_lr=0.2", "muon_momentum=0.65"],
    ["epochs=3.0", "tta_fraction=0.5", "tta_mirror_weight=0.4", "tta_shifted_weight=0.6"],
]


def compile_counts():
    """(Dynamo frames, Dynamo graphs, inductor compiles) so far in this process; an inductor
    graph loaded from its cache counts as a compile too."""
    from torch._dynamo.utils import counters
    inductor = counters["inductor"]
    return (counters["frames"]["ok"], counters["stats"]["unique_graphs"],
            sum(inductor[k] for k in ("fxgraph_cache_miss", "fxgraph_cache_hit",
                                      "fxgraph_cache_bypass")))


def measure(changes, cifar):
    """(frames, graphs, inductor compiles, warm-up s, run s) of one variant."""
    recipe = override(RECIPES["94"], SMALL + changes)
    how = dataclasses.replace(execution(recipe, "cpu"), compile=True, warmup=True)
    before = compile_counts()
    prepared = prepare(recipe, cifar, "cpu", how)
    warmup = prepared.warmup()
    caused = [after - b for after, b in zip(compile_counts(), before)]
    tick = time.perf_counter()
    prepared.run(0, evaluate_epochs=False)
    return (*caused, warmup, time.perf_counter() - tick)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-cache", action="store_true",
                        help="use inductor's usual cache folder (compiles may be loaded)")
    args = parser.parse_args(argv)
    if not args.keep_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_bench-")
    torch._dynamo.reset()
    cifar = synthetic_cifar(1000, 500)
    print(f"torch {torch.__version__}, CPU, inductor; recipe 94 with {' '.join(SMALL)}")
    print("variant | frames | graphs | inductor compiles | warm-up s | a run s | changes")
    for i, changes in enumerate(VARIANTS, 1):
        frames, graphs, compiles, warmup, run = measure(changes, cifar)
        print(f"{i:7} | {frames:6} | {graphs:6} | {compiles:17} | {warmup:9.1f} | "
              f"{run:7.1f} | {' '.join(changes) or '(the base)'}", flush=True)


if __name__ == "__main__":
    main()

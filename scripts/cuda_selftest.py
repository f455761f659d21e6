"""A few seconds on a GPU: recipe 94's CUDA path (fp16, channels_last, the captured step,
warm-up, two runs) on small synthetic data, before spending a long device call on the real
thing. Compile is off for speed; `--set compile=true` tests it too (a minute more).

    python scripts/cuda_selftest.py [--set key=value ...]
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import synthetic_cifar  # noqa: E402
from hlb.bench.overrides import override  # noqa: E402
from hlb.bench.report import Table, summary_lines  # noqa: E402
from hlb.bench.runs import resolve_device, run_recipe  # noqa: E402
from hlb.recipes import RECIPES  # noqa: E402


def main():
    extra = [a for a in sys.argv[1:] if a != "--set"]
    recipe = override(RECIPES["94"], ["train_images=4096", "test_images=1000", "epochs=2.0",
                                      "batch_size=256", "compile=false", *extra])
    device = resolve_device()
    record = run_recipe(recipe, 2, device, 0, synthetic_cifar(4096, 1000), Table())
    print("\n".join(summary_lines(record)))
    assert record.summary.n == 2 and record.summary.acc_mean > 0.5, "did not learn"
    print("cuda selftest: ok")


if __name__ == "__main__":
    main()

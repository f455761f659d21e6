"""FLOPs of one run of a recipe, counted by torch's FlopCounterMode on shapes alone.

    python scripts/flops.py [RECIPE] [key=value ...]

Counts the matrix work (convolutions and the head) of every training step (forward and
backward), the per-epoch plain evaluations, and the final TTA evaluation exactly as
`hlb.evaluate.logits` runs it (padded last chunks included). The network runs on the meta
device, so nothing is computed and it takes seconds. Divide by a GPU's measured matmul rate
for the floor on the run's time.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.flops import run_flops  # noqa: E402
from hlb.bench.overrides import script_recipe  # noqa: E402


def main():
    recipe = script_recipe(sys.argv[1:])
    flops = run_flops(recipe)
    total, train, tta = recipe.total_steps(), flops.train, flops.tta
    forward_per_image, plain = flops.forward_per_image, flops.plain
    views = tta / forward_per_image / recipe.test_images
    print(f"recipe {recipe.name}: forward {forward_per_image / 1e9:.3f} GFLOP per image")
    print(f"  training  {total} steps, {train / total / 1e12:.3f} TFLOP a step on average = "
          f"{train / 1e15:.3f} PFLOP")
    print(f"  TTA       {views:.3g} forwards per image x {recipe.test_images} images = "
          f"{tta / 1e15:.4f} PFLOP")
    print(f"  timed total {(train + tta) / 1e15:.3f} PFLOP "
          f"(+ {plain / 1e15:.4f} PFLOP untimed per-epoch evaluation)")


if __name__ == "__main__":
    main()

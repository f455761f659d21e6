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

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.overrides import override  # noqa: E402
from hlb.errors import UsageError  # noqa: E402
from hlb.evaluate import logits, tta_views  # noqa: E402
from hlb.model import Net  # noqa: E402
from hlb.recipes import get_recipe  # noqa: E402
from hlb.step import forward_loss  # noqa: E402


def count(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main():
    try:
        recipe = override(get_recipe(sys.argv[1] if len(sys.argv) > 1 else "94"), sys.argv[2:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    net = Net(recipe).to("meta")
    x = torch.empty(recipe.batch_size, 3, 32, 32, device="meta")
    labels = torch.zeros(recipe.batch_size, dtype=torch.long, device="meta")
    test = torch.empty(recipe.test_images, 3, 32, 32, device="meta")
    forward_per_image = count(lambda: net(x[:1]))

    def step(size):
        return count(lambda: forward_loss(net, x, labels, size, 0.0)[0].backward())

    def evaluation(level):
        views = tta_views(level, recipe.tta_mirror_weight, recipe.tta_shifted_weight)
        return count(lambda: logits(net, test, views, recipe.eval_batch_size,
                                    recipe.tta_fraction))

    # Steps at each training resolution (image_sizes: one per epoch, the last holds).
    total, per_epoch, sizes = recipe.total_steps(), recipe.steps_per_epoch(), recipe.image_sizes
    at = [sizes[min(s // per_epoch, len(sizes) - 1)] for s in range(total)]
    train = sum(at.count(size) * step(size) for size in set(at))
    tta = evaluation(recipe.tta_level)
    plain = evaluation(0) * recipe.epoch_count()
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

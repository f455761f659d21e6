"""FLOPs of one run of a recipe, counted by torch's FlopCounterMode on shapes alone.

The matrix work (convolutions and the head) of every training step (forward and backward),
the per-epoch plain evaluations, and the final TTA evaluation exactly as
`hlb.evaluate.logits` runs it (padded last chunks included). The network runs on the meta
device, so nothing is computed and it takes seconds. scripts/flops.py prints them; `hlb tune
--accuracy-only` ranks a trial's cost by them (processes that share a GPU cannot time).
"""

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from hlb.evaluate import logits, tta_views
from hlb.model import Net
from hlb.step import forward_loss


def count(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class Flops:
    forward_per_image: int
    train: int                # every training step, forward and backward
    tta: int                  # the final TTA evaluation (timed)
    plain: int                # the per-epoch plain evaluations (untimed)

    @property
    def timed(self):
        return self.train + self.tta


def run_flops(recipe):
    """The Flops of one run of `recipe`."""
    net = Net(recipe).to("meta")
    x = torch.empty(recipe.batch_size, 3, 32, 32, device="meta")
    labels = torch.zeros(recipe.batch_size, dtype=torch.long, device="meta")
    test = torch.empty(recipe.test_images, 3, 32, 32, device="meta")

    def step(size):
        return count(lambda: forward_loss(net, x, labels, size, 0.0)[0].backward())

    def evaluation(level):
        views = tta_views(level, recipe.tta_mirror_weight, recipe.tta_shifted_weight)
        return count(lambda: logits(net, test, views, recipe.eval_batch_size,
                                    recipe.tta_fraction))

    # Steps at each training resolution (image_sizes: one per epoch, the last holds).
    total, per_epoch, sizes = recipe.total_steps(), recipe.steps_per_epoch(), recipe.image_sizes
    at = [sizes[min(s // per_epoch, len(sizes) - 1)] for s in range(total)]
    return Flops(forward_per_image=count(lambda: net(x[:1])),
                 train=sum(at.count(size) * step(size) for size in set(at)),
                 tta=evaluation(recipe.tta_level),
                 plain=evaluation(0) * recipe.epoch_count())

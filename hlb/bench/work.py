"""The work of a recipe's run in multiply-adds, cheaply, for what the progress estimate says
before an arm has run (hlb.bench.report.Progress) and for verify's choice of a baseline.

One forward of one image per training resolution, on the CPU with fresh weights, counts the
convolutions and the head through forward hooks (2 FLOPs a multiply-add, as
torch.utils.flop_counter counts them); a training step is three forwards a image (forward,
then the backward's two), an evaluation one per image and view. hlb.bench.flops counts every
op exactly on the meta device, but its first use costs seconds: an estimate needs the ratios.
"""

from dataclasses import dataclass

import torch
from torch import nn

from hlb.evaluate import tta_views
from hlb.model import Net


def forward_flops(net, size):
    """FLOPs of one forward of one `size` x `size` image through `net`'s convolutions and
    linear layers."""
    total = []

    def conv(module, inputs, output):
        k = module.weight[0].numel()            # in_channels / groups * kernel area
        total.append(2 * output.numel() * k)

    def linear(module, inputs, output):
        total.append(2 * output.numel() * module.in_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size))
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return sum(total)


@dataclass(frozen=True)
class Work:
    """FLOPs of one run: its training steps, its final TTA evaluation, its per-epoch plain
    evaluations (untimed), and how many steps it takes."""
    train: float
    tta: float
    plain: float
    steps: int

    @property
    def per_step(self):
        return self.train / self.steps

    @property
    def run(self):
        return self.train + self.tta + self.plain


def run_work(recipe):
    """The Work of one run of `recipe`. The random state is left as it was: this may run
    between a run's steps, whose augmentation draws from it."""
    with torch.random.fork_rng(devices=[]):
        net = Net(recipe)
    sizes, per_epoch, total = recipe.image_sizes, recipe.steps_per_epoch(), recipe.total_steps()
    at = [sizes[min(s // per_epoch, len(sizes) - 1)] for s in range(total)]
    per_image = {size: forward_flops(net, size) for size in set(at) | {32}}
    views = len(tta_views(recipe.tta_level, recipe.tta_mirror_weight,
                          recipe.tta_shifted_weight))
    evaluation = per_image[32] * recipe.test_images
    return Work(train=sum(3 * per_image[size] * recipe.batch_size for size in at),
                tta=evaluation * (1 + (views - 1) * recipe.tta_fraction),
                plain=evaluation * recipe.epoch_count(), steps=total)

"""Optimizer, learning-rate schedule and Lookahead.

Hyperparameters arrive in decoupled form (per 1024 examples, independent of momentum) and are
converted here to what torch.optim.SGD expects for a summed loss.
"""

import torch
from torch import nn


def sgd_settings(recipe):
    """(lr, bias_lr, decay) for torch SGD from the recipe's decoupled values.

    With Nesterov momentum m a constant gradient moves a weight 1 + 1/(1-m) times the raw step,
    so the raw step is divided by that factor; `decay` is the fraction of each weight removed
    per step at the peak learning rate.
    """
    kilostep = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr = recipe.lr / kilostep
    decay = recipe.weight_decay * recipe.batch_size / kilostep
    return lr, lr * recipe.bias_lr_scale, decay


def make_optimizer(net, recipe):
    lr, bias_lr, decay = sgd_settings(recipe)
    bn_biases, others = [], []
    for module in net.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                continue
            (bn_biases if isinstance(module, nn.BatchNorm2d) else others).append(p)
    # torch SGD multiplies weight_decay by lr, so dividing by lr keeps decay independent of it.
    groups = [dict(params=bn_biases, lr=bias_lr, weight_decay=decay / bias_lr),
              dict(params=others, lr=lr, weight_decay=decay / lr)]
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)


def lr_multiplier(step, total_steps, warmup_frac, start, end):
    """Linear warm-up from `start` to 1 over the first warmup_frac of steps, then linear decay
    to `end` at the last step."""
    warmup = int(total_steps * warmup_frac)
    if step < warmup:
        return start + (1 - start) * step / warmup
    return 1 + (end - 1) * (step - warmup) / max(1, total_steps - warmup)


class Lookahead:
    """Every few steps, pull a slow copy of the weights toward the fast ones, then restart the
    fast weights from the slow copy. The pull is weak early and strong late in training.

    The slow copy holds every floating-point entry of the state dict, BatchNorm running
    statistics included.
    """

    def __init__(self, net, every, decay_per_step, total_steps):
        self.net = net
        self.every = every
        self.decay = decay_per_step ** every
        self.total_steps = total_steps
        self.slow = {k: v.detach().clone() for k, v in self._floats().items()}

    def _floats(self):
        return {k: v for k, v in self.net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def _pull(self, keep):
        for name, fast in self._floats().items():
            slow = self.slow[name]
            slow.lerp_(fast, 1 - keep)
            fast.copy_(slow)

    def after_step(self, step):
        """Call with the number of steps taken so far."""
        if self.every and step % self.every == 0:
            self._pull(self.decay * (step / self.total_steps) ** 3)

    def finish(self):
        """End of training: the network takes the slow weights (if Lookahead is on)."""
        if self.every:
            self._pull(1.0)

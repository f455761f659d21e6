"""Optimizers (Muon for conv filters, Nesterov SGD), the learning-rate schedule and its shapes,
the whitening bias's freeze, and Lookahead.

Learning rates arrive plain (hlb.recipes): each param group's rate per step at the schedule's
peak, for the summed loss.
"""

import functools
import math

import torch
from torch import nn

from hlb.execution import compiled


def newton_schulz(g, steps, dtype, eps=1e-7):
    """An approximately orthogonal matrix with g's singular vectors: U V^T for g = U S V^T.

    A quintic iteration pushes every singular value of g (scaled so they are <= 1) toward 1;
    its coefficients favour speed over exactness, leaving values roughly in 0.7..1.2, which
    trains as well. `g` is one matrix or a batch (..., rows, cols); the iteration runs in
    `dtype` (bf16 where a GPU has it natively, fp16 on older ones, fp32 on a CPU:
    hlb.execution).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT                         # iterate on the smaller Gram matrix
    # Scaled in fp32, then cast: a gradient's norm may pass fp16's largest value (65504).
    x = (x / (x.norm(dim=(-2, -1), keepdim=True) + eps)).to(dtype)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def orthogonalize_all(matrices, steps, dtype, newton_schulz=newton_schulz):
    """newton_schulz of each matrix, all in one batch, so a step costs a few large matmuls
    instead of a few small ones per matrix (the padded batch is hiverge's cifar10-speedrun's
    idea).

    Each matrix is turned wide and zero-padded to a common shape. Zero rows and columns stay
    zero through the iteration and add nothing to the norm, so each result equals the
    matrix's own.
    """
    wide = [m.mT if m.size(0) > m.size(1) else m for m in matrices]
    rows, cols = max(w.size(0) for w in wide), max(w.size(1) for w in wide)
    batch = wide[0].new_zeros(len(wide), rows, cols)
    for padded, w in zip(batch, wide):
        padded[:w.size(0), :w.size(1)] = w
    out = [o[:w.size(0), :w.size(1)] for o, w in zip(newton_schulz(batch, steps, dtype), wide)]
    return [o if w is m else o.mT for o, w, m in zip(out, wide, matrices)]


@functools.cache
def compiled_orthogonalize_all():
    """orthogonalize_all with the iteration through torch.compile (its chain of matmuls and
    elementwise ops becomes a few kernels); built once per process."""
    return functools.partial(orthogonalize_all, newton_schulz=compiled(newton_schulz))


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalised update, for conv filters (reshaped to out x in*k*k).

    Each filter bank is rescaled to Frobenius norm sqrt(out_channels) before its step: a fixed
    norm stands in for weight decay, and makes `lr` a step size relative to the weights.
    `weight_decay` (decoupled: each weight shrinks by lr * weight_decay after the rescaling)
    then only nudges the step's relative size; hiverge's speedrun, which rescales every few
    steps, uses it. The step treats all filters at once (multi-tensor ops, one batched
    orthogonalisation). `lr` may be a float or a 0-dim tensor on the device (see Schedule).
    """

    def __init__(self, params, lr, momentum, ns_steps, weight_decay, dtype,
                 orthogonalize=orthogonalize_all):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps,
                                      weight_decay=weight_decay))
        self.dtype = dtype                  # of the Newton-Schulz iteration
        self.orthogonalize = orthogonalize
        # Made once, so a step allocates no state (and a captured step keeps its addresses).
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["momentum"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = [self.state[p]["momentum"] for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            nesterov = torch._foreach_add(grads, buffers, alpha=group["momentum"])
            norms = torch._foreach_norm(params)
            torch._foreach_mul_(params, [len(p) ** 0.5 / n for p, n in zip(params, norms)])
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            updates = self.orthogonalize([g.reshape(len(g), -1) for g in nesterov],
                                         group["ns_steps"], self.dtype)
            updates = [u.reshape(p.shape) for u, p in zip(updates, params)]
            torch._foreach_mul_(updates, group["lr"])      # a tensor lr: no host value
            torch._foreach_sub_(params, updates)


class WhiteningBiasFreeze:
    """The whitening bias trains for its first few steps, then stays fixed: the step it
    freezes at, its own param group (whose learning rate may run the schedule's shape over
    those steps alone, falling to 0 at the freeze), and the switch the training step throws.
    """

    def __init__(self, net, recipe):
        self.bias = net.whiten.bias
        self.steps = round(recipe.whiten_bias_epochs * recipe.steps_per_epoch())
        self.span = self.steps if recipe.whiten_bias_own_schedule else None
        self.set(False)

    def group(self, lr, decay):
        """Its SGD param group (see make_optimizers)."""
        return sgd_group("whiten_bias", [self.bias], lr, decay, span=self.span)

    def frozen_at(self, step):
        return step >= self.steps

    def set(self, frozen):
        # Without a gradient the bias drops out of backward and of its optimizer's step.
        self.bias.requires_grad_(not frozen)
        self.frozen = frozen


def make_optimizers(net, recipe, execution, freeze):
    """The optimizers of one network, with their state made once (`zero_state` per run).

    Each param group has a `name` and a `peak_lr`, which the schedule scales over its `span`
    of steps (the whole run unless the group says).
    """
    muon = recipe.optimizer == "muon"
    filters, bn_biases, others = [], [], []
    for module in net.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or p is freeze.bias:
                continue
            if muon and p.ndim == 4:
                filters.append(p)
            elif isinstance(module, nn.BatchNorm2d):
                bn_biases.append(p)
            else:
                others.append(p)            # the head (and the filters, without Muon)
    decay = recipe.weight_decay
    groups = [sgd_group("bn_biases", bn_biases, recipe.bias_lr, decay),
              freeze.group(recipe.whiten_bias_lr, decay),
              sgd_group("head" if muon else "filters_and_head", others, recipe.head_lr, decay)]
    # fused: one kernel per step for all of a group's tensors.
    sgd = torch.optim.SGD(groups, lr=recipe.head_lr, momentum=recipe.momentum, nesterov=True,
                          fused=True)
    for p in (p for group in groups for p in group["params"]):
        # With zero momentum the first step's buffer is the gradient itself, as torch's own
        # first step makes it, but without a different first step.
        sgd.state[p]["momentum_buffer"] = torch.zeros_like(p)
    optimizers = [sgd]
    if muon:
        orthogonalize = compiled_orthogonalize_all() if execution.compile else orthogonalize_all
        optimizers.append(Muon([dict(name="filters", params=filters)], recipe.muon_lr,
                               recipe.muon_momentum, recipe.muon_ns_steps,
                               recipe.muon_weight_decay, execution.orthogonalize_dtype,
                               orthogonalize))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def sgd_group(name, params, lr, decay, **more):
    """An SGD param group at `lr` that removes `decay` of each weight per step at the peak:
    torch's SGD removes lr * weight_decay, so the decay falls with the schedule, as in
    airbench94_muon."""
    return dict(name=name, params=params, lr=lr, weight_decay=decay / lr, **more)


def zero_state(optimizers):
    """Start of a run: every optimizer's momentum back to zero, in place."""
    torch._foreach_zero_([v for o in optimizers for state in o.state.values()
                          for v in state.values()])


class Schedule:
    """Every param group's learning rate at every step of a run, as a table on the device.

    Each group's `lr` becomes a 0-dim view into `now`; `advance()` copies the table's column
    for the device step counter into `now`, then counts the step. The operations are the same
    at every step (no Python float changes), so a captured step carries the schedule with it.
    A group with a `span` runs the schedule's shape over its first `span` steps (the
    whitening bias's, see WhiteningBiasFreeze). The groups become ScheduledGroups, so that
    their rate cannot be set by hand and silently leave the schedule.
    """

    def __init__(self, optimizers, recipe, device):
        total = recipe.total_steps()
        spans = [g.get("span") or total for o in optimizers for g in o.param_groups]
        peaks = [g["peak_lr"] for o in optimizers for g in o.param_groups]
        self.table = torch.tensor(
            [[peak * lr_multiplier(min(step, span), span, recipe) for step in range(total)]
             for peak, span in zip(peaks, spans)], dtype=torch.float, device=device)
        self.now = torch.zeros(len(peaks), 1, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        views = iter(self.now[:, 0])
        for optimizer in optimizers:
            optimizer.param_groups[:] = [ScheduledGroup(group, next(views))
                                         for group in optimizer.param_groups]

    def reset(self):
        self.step.zero_()

    def advance(self):
        torch.index_select(self.table, 1, self.step, out=self.now)
        self.step.add_(1)


class ScheduledGroup(dict):
    """A param group whose `lr` is a view into the schedule's table: setting it to anything
    else raises, where a plain dict would quietly detach the group from the schedule (and a
    captured step would never see the new value). Change the recipe's rate instead."""

    def __init__(self, group, lr):
        super().__init__(group)
        super().__setitem__("lr", lr)

    def __setitem__(self, key, value):
        if key == "lr" and value is not self["lr"]:
            raise TypeError(
                f"param group {self.get('name')!r}: its lr comes from the schedule "
                "(hlb.optim.Schedule); change the recipe's rate or the schedule's shape instead")
        super().__setitem__(key, value)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


# The learning rate's shapes after the warm-up, by the recipe's name for them (`schedule`):
# shape(t, end) is the multiplier at fraction t of the way from the warm-up's end (1) to the
# last step (`end`). A new shape is one function here, then `--set schedule=its_name`.
SCHEDULES = {}


def schedule_shape(shape):
    SCHEDULES[shape.__name__] = shape
    return shape


@schedule_shape
def linear(t, end):
    return 1 + (end - 1) * t


@schedule_shape
def cosine(t, end):
    return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2


def lr_multiplier(step, total_steps, recipe):
    """The learning rate's multiplier at `step` of `total_steps`: a linear warm-up from
    `lr_start` to 1 over the first `warmup_frac` of the steps, then the recipe's shape down to
    `lr_end` at the last step."""
    warmup = int(total_steps * recipe.warmup_frac)
    if step < warmup:
        return recipe.lr_start + (1 - recipe.lr_start) * step / warmup
    t = (step - warmup) / max(1, total_steps - warmup)
    return SCHEDULES[recipe.schedule](t, recipe.lr_end)


class Lookahead:
    """Every few steps, pull a slow copy of the weights toward the fast ones, then restart the
    fast weights from the slow copy. The pull is weak early and strong late in training: its
    weight is decay * (step / total) ** ramp.

    The slow copy holds every floating-point entry of the state dict, BatchNorm running
    statistics included. It is not part of the captured step: the training loop calls it
    between steps, two multi-tensor kernels every `every` steps. Made once; `start()` begins
    each run's slow copy at the network's weights.
    """

    def __init__(self, net, every, decay_per_step, total_steps, ramp):
        self.every = every
        self.decay = decay_per_step ** every
        self.total_steps = total_steps
        self.ramp = ramp
        # The state dict's tensors share storage with the network, so this list stays live.
        self.fast = [v for v in net.state_dict().values() if v.is_floating_point()] \
            if every else []
        self.slow = [v.detach().clone() for v in self.fast]

    @torch.no_grad()
    def start(self):
        """A run's start, once the network is ready: the slow copy takes its weights."""
        if self.every:
            torch._foreach_copy_(self.slow, self.fast)

    @torch.no_grad()
    def _pull(self, keep):
        # One multi-tensor kernel per operation instead of two small kernels per tensor.
        torch._foreach_lerp_(self.slow, self.fast, 1 - keep)
        torch._foreach_copy_(self.fast, self.slow)

    def after_step(self, step):
        """Call with the number of steps taken so far."""
        if self.every and step % self.every == 0:
            self._pull(self.decay * (step / self.total_steps) ** self.ramp)

    def finish(self):
        """End of training: the network takes the slow weights (if Lookahead is on)."""
        if self.every:
            self._pull(1.0)

"""One training run, start to finish, returning a result record.

The method, in order: normalise the data, initialise the whitening layer from patch statistics,
train with Nesterov SGD (Muon for the conv filters in 94muon) under a warm-up/decay schedule
and Lookahead, freezing the whitening bias after a few epochs, then evaluate with test-time
augmentation.

Timed region (see README.md, "Timing"): data normalisation and padding, whitening init, each
epoch's augmentation, every training step, and the final TTA evaluation. Not timed: loading
from disk, building the network, the per-epoch plain evaluation (timed separately) and
printing.
"""

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hlb.augment import TrainBatches, normalize
from hlb.evaluate import evaluate
from hlb.model import init_whitening, make_net
from hlb.optim import Lookahead, make_optimizers, set_learning_rates


# A run whose mean loss per image passes this has diverged: a healthy one starts near
# ln(10) = 2.3 and falls, while a blown-up one jumps to NaN, inf, or millions.
DIVERGED_LOSS = 100.0


def _diverged(loss_per_image):
    return not loss_per_image < DIVERGED_LOSS          # also True for NaN


@dataclass
class EpochRow:
    run: int
    epoch: int
    train_loss: float   # mean per image over the epoch
    train_acc: float    # on the augmented training batches
    val_loss: float     # plain (no TTA) test loss
    val_acc: float      # plain (no TTA) test accuracy
    time_s: float       # timed seconds so far in this run
    tta_acc: float = None  # only with a target: the timed TTA check at this epoch's end


@dataclass
class RunResult:
    run: int
    seed: int
    tta_acc: float = math.nan     # the reported accuracy
    val_acc: float = math.nan     # plain accuracy of the final network
    train_time_s: float = math.nan
    eval_time_s: float = 0.0      # untimed per-epoch evaluation, summed over epochs
    epochs: list = field(default_factory=list)
    diverged: bool = False
    time_to_target: float = None  # timed seconds until the target TTA accuracy, if reached
    peak_mem_allocated: int = 0   # bytes, GPU only
    peak_mem_reserved: int = 0


@dataclass
class DeviceData:
    """The chosen images, still uint8, already on the device (loading is not timed)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def to_device(cifar, recipe, device):
    def put(t, n):
        return t[:n].to(device, non_blocking=True)
    return DeviceData(put(cifar.train_images, recipe.train_images),
                      put(cifar.train_labels, recipe.train_images),
                      put(cifar.test_images, recipe.test_images),
                      put(cifar.test_labels, recipe.test_images))


class Stopwatch:
    """Accumulates seconds between start() and stop(); on a GPU with CUDA events, waiting for
    the queued work to finish at each stop."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = 0.0

    def start(self):
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._begin = time.perf_counter()

    def stop(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize()
            self.seconds += self._begin.elapsed_time(end) / 1000
        else:
            self.seconds += time.perf_counter() - self._begin


def build_net(recipe, device):
    """The network, placed and cast for `device`. Build once per invocation; `reset` per run."""
    net = make_net(recipe).to(device)
    if torch.device(device).type == "cuda":
        dtype = compute_dtype(recipe, device)
        if dtype != torch.float:
            net.to(dtype)
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.float()          # BatchNorm statistics need fp32
        if recipe.channels_last:
            net.to(memory_format=torch.channels_last)
    return net


def reset(net):
    for m in net.modules():
        if m is not net and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    torch.nn.init.zeros_(net.whiten.bias)
    net.whiten.bias.requires_grad_(True)


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def compute_dtype(recipe, device):
    """The dtype of weights and activations: the recipe's on a GPU, fp32 on a CPU."""
    return PRECISIONS[recipe.precision] if torch.device(device).type == "cuda" else torch.float


def train_run(recipe, data, net, device, seed, run=0, on_epoch=None, on_step=None,
              forward=None, target_acc=None):
    """Train `net` (reset here) once and return a RunResult.

    With `target_acc`, the TTA accuracy is measured at the end of every epoch inside the
    timed region (its cost counts), and the run stops at the first epoch that reaches it.

    `forward` is the callable used for the training and evaluation passes (for example a
    compiled `net`); it defaults to `net` itself. `on_epoch(row)` and `on_step(run, epoch,
    step, total)` are optional progress callbacks; they run outside the timed region or cost
    no device sync.
    """
    forward = net if forward is None else forward
    cuda = torch.device(device).type == "cuda"
    torch.manual_seed(seed)
    reset(net)
    result = RunResult(run=run, seed=seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    dtype = compute_dtype(recipe, device)
    memory_format = torch.channels_last if cuda and recipe.channels_last else \
        torch.contiguous_format

    total_steps = recipe.total_steps()
    steps_per_epoch = recipe.steps_per_epoch()
    freeze_step = recipe.whiten_bias_steps()
    optimizers = make_optimizers(net, recipe)
    watch = Stopwatch(device)

    watch.start()
    train_images = normalize(data.train_images, dtype).contiguous(memory_format=memory_format)
    test_images = normalize(data.test_images, dtype).contiguous(memory_format=memory_format)
    init_whitening(net, train_images[:recipe.whiten_init_images], recipe.whiten_eps)
    batches = TrainBatches(train_images, data.train_labels, recipe.batch_size, recipe.flip,
                           recipe.translate, cutout=recipe.cutout, memory_format=memory_format)
    del train_images        # `batches` keeps its padded copy: one full-set copy fewer in memory
    # The slow copy starts from the whitened network, not the random one.
    lookahead = Lookahead(net, recipe.lookahead_every, recipe.lookahead_decay, total_steps)
    watch.stop()

    step = 0
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        watch.start()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for images, labels in batches.epoch(epoch):
            if step == freeze_step:
                net.whiten.bias.requires_grad_(False)
            out = forward(images)
            loss = F.cross_entropy(out, labels, label_smoothing=recipe.label_smoothing,
                                   reduction="sum")
            loss.backward()
            set_learning_rates(optimizers, step, recipe)
            for optimizer in optimizers:
                optimizer.step()
            net.zero_grad(set_to_none=True)
            step += 1
            lookahead.after_step(step)
            loss_sum += loss.detach().float()
            correct += (out.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if not cuda and _diverged(loss.item() / len(labels)):
                result.diverged = True
                break                  # on the CPU a check per step costs nothing
            if on_step:
                on_step(run, epoch, step, total_steps)
            if step >= total_steps:
                lookahead.finish()
                break
        check = None
        if target_acc is not None:
            check, _ = evaluate(forward, test_images, data.test_labels, recipe)
            check = check.item()       # the sync is part of the check's cost
        watch.stop()

        train_loss = loss_sum.item() / seen
        if result.diverged or _diverged(train_loss):
            result.diverged = True
            result.train_time_s = watch.seconds
            return result

        tick = time.perf_counter()
        val_acc, val_loss = evaluate(forward, test_images, data.test_labels, recipe, tta=False)
        row = EpochRow(run, epoch + 1, train_loss, correct.item() / seen, val_loss.item(),
                       val_acc.item(), watch.seconds, check)
        result.eval_time_s += time.perf_counter() - tick
        result.epochs.append(row)
        if on_epoch:
            on_epoch(row)
        if check is not None and check >= target_acc:
            result.time_to_target = watch.seconds
            break

    if target_acc is None:
        watch.start()
        tta_acc, _ = evaluate(forward, test_images, data.test_labels, recipe)
        watch.stop()
        result.tta_acc = tta_acc.item()
    else:
        result.tta_acc = check         # the last check is the final TTA evaluation
    result.val_acc = result.epochs[-1].val_acc
    result.train_time_s = watch.seconds
    if cuda:
        result.peak_mem_allocated = torch.cuda.max_memory_allocated(device)
        result.peak_mem_reserved = torch.cuda.max_memory_reserved(device)
    return result

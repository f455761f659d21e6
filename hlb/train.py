"""One training run, start to finish, returning a result record.

The method, in order: normalise the data, initialise the whitening layer from patch statistics,
train with Nesterov SGD (Muon for the conv filters in 94muon) under a warm-up/decay schedule
and Lookahead, freezing the whitening bias after a few epochs, then evaluate with test-time
augmentation. One training step is hlb.step.TrainStep.

Timed region (see README.md, "Timing"): data normalisation and padding, whitening init, each
epoch's augmentation, every training step, and the final TTA evaluation. Not timed: loading
from disk, building the network, the per-epoch plain evaluation (timed separately) and
printing.
"""

import math
import time
from dataclasses import dataclass, field

import torch

from hlb.augment import TrainBatches, normalize
from hlb.evaluate import evaluate
from hlb.model import compute_dtype, init_whitening, input_memory_format, reset
from hlb.optim import Lookahead
from hlb.step import TrainStep


def train_run(recipe, data, net, device, seed, run=0, on_epoch=None, on_step=None,
              forward=None, target_acc=None, step=None):
    """Train `net` (reset here) once and return a RunResult.

    `step`: the network's TrainStep, made here if not given or made for another recipe (pass
    one to keep its state and captured graphs). `forward`: the callable for evaluation and a
    new step's training passes (a compiled `net`, say); `net` itself by default.
    With `target_acc`, the TTA accuracy is measured at the end of every epoch inside the timed
    region (its cost counts), and the run stops at the first epoch that reaches it.
    `on_epoch(row)` and `on_step(run, epoch, step, total)` are optional progress callbacks;
    they run outside the timed region or cost no device sync.
    """
    forward = net if forward is None else forward
    if step is None or step.recipe != recipe:       # a step holds one recipe's settings
        step = TrainStep(net, recipe, device, forward)
    torch.manual_seed(seed)
    reset(net)
    step.reset()
    result, watch, memory = RunResult(run=run, seed=seed), Stopwatch(device), PeakMemory(device)
    total_steps = recipe.total_steps()

    watch.start()
    batches, test_images = prepare_data(recipe, data, net, device)
    lookahead = Lookahead(net, recipe.lookahead_every, recipe.lookahead_decay, total_steps,
                          recipe.lookahead_ramp)    # the slow copy starts whitened
    watch.stop()

    test = TestSet(forward, test_images, data.test_labels, recipe)
    target = TargetCheck(target_acc, test)
    progress = Progress(on_step, run, total_steps)
    for epoch in range(math.ceil(total_steps / recipe.steps_per_epoch())):
        watch.start()
        result.diverged = not train_epoch(step, batches, epoch, lookahead, total_steps,
                                          progress)
        tta_check = None if result.diverged else target.measure()
        watch.stop()

        train_loss, train_acc = step.epoch_means()
        if result.diverged or has_diverged(train_loss):
            result.diverged = True
            break
        row = test.epoch_row(result, epoch + 1, train_loss, train_acc, watch.seconds, tta_check)
        if on_epoch:
            on_epoch(row)
        if target.reached(tta_check):
            result.time_to_target = watch.seconds
            break

    if not result.diverged:
        final_accuracy(result, test, watch, tta_check)
    result.train_time_s = watch.seconds
    memory.record(result)
    return result


def final_accuracy(result, test, watch, last_check):
    """The run's reported accuracies. With a target, `last_check` (the last epoch's timed TTA
    check) is the final TTA evaluation; without one (None), it is measured now, timed."""
    if last_check is None:
        watch.start()
        tta_acc = test.tta_accuracy()
        watch.stop()
        result.tta_acc = tta_acc.item()
    else:
        result.tta_acc = last_check
    result.val_acc = result.epochs[-1].val_acc


def prepare_data(recipe, data, net, device):
    """The training batches and the normalised test images; the whitening layer is set from
    the training images' patches (all of it timed)."""
    dtype, layout = compute_dtype(recipe, device), input_memory_format(recipe, device)
    train_images = normalize(data.train_images, dtype).contiguous(memory_format=layout)
    test_images = normalize(data.test_images, dtype).contiguous(memory_format=layout)
    init_whitening(net, train_images[:recipe.whiten_init_images], recipe.whiten_eps)
    # `batches` keeps a padded copy of the training images, and nothing else does.
    batches = TrainBatches(train_images, data.train_labels, recipe.batch_size, recipe.flip,
                           recipe.translate, cutout=recipe.cutout, memory_format=layout)
    return batches, test_images


def train_epoch(step, batches, epoch, lookahead, total_steps, progress):
    """One pass over the epoch's batches, stopping at the run's last step; False if the run
    diverged (checked per step on the CPU only, where reading the loss costs no GPU sync).

    Lookahead runs between steps, outside the (captured) step, every few steps."""
    images, batch_indices = batches.epoch(epoch)
    check_each_step = not step.images.is_cuda
    for index in batch_indices:
        step.load(images, batches.labels, index)
        loss = step()
        lookahead.after_step(step.taken)
        if check_each_step and has_diverged(loss.item() / len(index)):
            return False
        progress(epoch, step.taken)
        if step.taken >= total_steps:
            lookahead.finish()
            break
    return True


# Tooling around the run: divergence, progress, the target check, evaluation, timing, memory.

# A run whose mean loss per image passes this has diverged: a healthy one starts near
# ln(10) = 2.3 and falls, while a blown-up one jumps to NaN, inf, or millions.
DIVERGED_LOSS = 100.0


def has_diverged(loss_per_image):
    return not loss_per_image < DIVERGED_LOSS          # also True for NaN


class Progress:
    """Calls on_step(run, epoch, steps taken, total steps) after each step, if given."""

    def __init__(self, on_step, run, total_steps):
        self.on_step, self.run, self.total_steps = on_step, run, total_steps

    def __call__(self, epoch, taken):
        if self.on_step:
            self.on_step(self.run, epoch, taken, self.total_steps)


class TestSet:
    """The normalised test images and the run's two ways of evaluating them."""

    def __init__(self, forward, images, labels, recipe):
        self.forward, self.images, self.labels, self.recipe = forward, images, labels, recipe

    def tta_accuracy(self):
        """The recipe's TTA accuracy, as a device tensor (reading it is the caller's sync)."""
        accuracy, _ = evaluate(self.forward, self.images, self.labels, self.recipe)
        return accuracy

    def epoch_row(self, result, epoch, train_loss, train_acc, seconds, tta_check):
        """The epoch's EpochRow, appended to `result`; its plain evaluation is untimed and
        its seconds are added to result.eval_time_s."""
        tick = time.perf_counter()
        val_acc, val_loss = evaluate(self.forward, self.images, self.labels, self.recipe,
                                     tta=False)
        row = EpochRow(result.run, epoch, train_loss, train_acc, val_loss.item(),
                       val_acc.item(), seconds, tta_check)
        result.eval_time_s += time.perf_counter() - tick
        result.epochs.append(row)
        return row


class TargetCheck:
    """With a target accuracy, the TTA accuracy at each epoch's end (inside the timed region,
    so its cost counts) and whether it reached the target; without one, nothing."""

    def __init__(self, target_acc, test):
        self.target_acc, self.test = target_acc, test

    def measure(self):
        if self.target_acc is None:
            return None
        return self.test.tta_accuracy().item()     # the sync is part of the check's cost

    def reached(self, accuracy):
        return accuracy is not None and accuracy >= self.target_acc


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


class PeakMemory:
    """The peak GPU memory of one run (nothing on a CPU)."""

    def __init__(self, device):
        self.device = device
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def record(self, result):
        if self.cuda:
            result.peak_mem_allocated = torch.cuda.max_memory_allocated(self.device)
            result.peak_mem_reserved = torch.cuda.max_memory_reserved(self.device)


# Records: what a run reads and what it returns.

@dataclass
class EpochRow:
    run: int
    epoch: int
    train_loss: float   # mean per image over the epoch, label-smoothed as in training
    train_acc: float    # on the augmented training batches
    val_loss: float     # plain (no TTA) test loss, label-smoothed like train_loss
    val_acc: float      # plain (no TTA) test accuracy
    time_s: float       # timed seconds so far in this run: the clock whose total, at the
                        # run's end, is RunResult.train_time_s
    tta_acc: float = None  # only with a target: the timed TTA check at this epoch's end


@dataclass
class RunResult:
    run: int
    seed: int
    tta_acc: float = math.nan     # the reported accuracy
    val_acc: float = math.nan     # plain accuracy of the final network
    train_time_s: float = math.nan  # the run's timed seconds (README.md, "Timing")
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

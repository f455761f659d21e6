"""One run of the method: prepared once per recipe and device, then run per seed.

`prepare(recipe, cifar, device)` builds the run in the method's order:
1. the data on the device (hlb.augment), and how this device runs the recipe (hlb.execution);
2. the network (hlb.model), placed and cast for the device;
3. the optimizers (hlb.optim): Muon for the conv filters and Nesterov SGD for biases and the
   head (SGD alone with Lookahead in recipe 94sgd), their schedule, the whitening bias's freeze;
4. one training step (hlb.step), compiled and captured on a GPU in the untimed `warmup()`.
`PreparedRun.run(seed)` then trains once: reset, normalise the data, initialise the whitening
layer from patch statistics, train epoch by epoch, and evaluate with test-time augmentation
(hlb.evaluate). It returns a RunResult.

Timed region (docs/timing.md, whose list tests/test_timed_region.py checks against a traced
run): data normalisation and padding, whitening init, each epoch's augmentation, every
training step, Lookahead between steps, the final TTA evaluation (with a target, the TTA check
at each epoch's end). Not timed: loading from disk, building the network, the warm-up, the
per-epoch plain evaluation (timed apart), the divergence reads and every progress callback.
"""

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from hlb.augment import TrainBatches, normalize, to_device
from hlb.evaluate import plain_evaluation, tta_accuracy
from hlb.execution import compiled, execution
from hlb.model import build_net, init_whitening, reset
from hlb.optim import Lookahead, Schedule, WhiteningBiasFreeze, make_optimizers
from hlb.step import TrainStep

WARMUP_SEED = 2**31           # the warm-up run's seed, beyond any timed run's


def prepare(recipe, cifar, device, how=None):
    """`recipe` made ready on `device` with `cifar`'s images (`how`: an Execution, to run it
    otherwise than hlb.execution decides, as tests do)."""
    return PreparedRun(recipe, cifar, how or execution(recipe, device))


class PreparedRun:
    """One recipe on one device: data placed, network built, optimizers and step made."""

    def __init__(self, recipe, cifar, how):
        self.recipe, self.execution = recipe, how
        if how.cuda:
            torch.backends.cudnn.benchmark = True   # the fastest kernels, found in the warm-up
        self.data = to_device(cifar, recipe, how.device)
        self.net = build_net(recipe, how)
        self.notes = []             # why compile or capture were turned off, one line a stage
        self._make_step()

    def _make_step(self):
        """The optimizers, their schedule, Lookahead and the step (again after a fallback)."""
        recipe, net, how = self.recipe, self.net, self.execution
        self.freeze = WhiteningBiasFreeze(net, recipe)
        self.optimizers = make_optimizers(net, recipe, how, self.freeze)
        self.schedule = Schedule(self.optimizers, recipe, how.device)
        self.lookahead = Lookahead(net, recipe.lookahead_every, recipe.lookahead_decay,
                                   recipe.total_steps(), recipe.lookahead_ramp)
        self.step = TrainStep(net, recipe, how, self.optimizers, self.schedule, self.freeze)
        # Evaluation's forward: compiled apart from the training step's graph.
        self.forward = compiled(net, how.compile_mode) if how.compile else net

    @property
    def fallback(self):
        """The warm-up's fallback notes in one line, or None when nothing fell back."""
        return "; then ".join(self.notes) or None

    def warmup(self):
        """One untimed run of the same shapes where the execution asks for it (a GPU): cudnn
        autotuning, compiling and capturing happen here, not in a timed run; returns its
        seconds. A failed stage (an old card, no Triton) steps down (`stepped_down`), a line in
        `notes` each; an out-of-memory, even inside a compile error, is raised as one."""
        if not self.execution.warmup:
            return 0.0
        tick = time.perf_counter()
        while True:
            try:
                self._warm()
                return time.perf_counter() - tick
            except Exception as e:
                memory, lower = out_of_memory(e), stepped_down(self.execution, e)
                if memory is not None or lower is None:
                    raise memory or e       # a new out-of-memory keeps `e` as its context
                self.execution, note = lower
                self.notes.append(note)
                self._make_step()

    def _warm(self):
        if self.execution.capture:
            self.step.capture(self.recipe.total_steps())
        self.run(WARMUP_SEED, run=-1)
        give_back_cache(self.execution)

    def run(self, seed, run=0, on_epoch=None, on_step=None, target_acc=None,
            evaluate_epochs=True):
        """Train once with `seed` and return a RunResult.

        With `target_acc`, the TTA accuracy is measured at the end of every epoch inside the
        timed region (its cost counts), and the run stops at the first epoch that reaches it.
        `evaluate_epochs=False` skips the untimed plain evaluation after each epoch (the final
        one still runs). `on_epoch(row)` and `on_step(run, epoch, steps_taken, total)` are
        progress callbacks, and neither runs inside the timed region: `on_step` after every
        step where the execution pauses between steps (a CPU, whose epoch can take minutes;
        the watch stops around it and the step's divergence read), else once at each epoch's
        end (a GPU, where nothing but the method runs between a start and a stop).
        """
        recipe, step = self.recipe, self.step
        torch.manual_seed(seed)
        reset(self.net)
        step.reset()
        result, watch = RunResult(run=run, seed=seed), Stopwatch(self.execution.kind)
        memory = PeakMemory(self.execution)
        total, epochs = recipe.total_steps(), recipe.epoch_count()
        tell = (lambda epoch, steps: on_step(run, epoch, steps, total)) if on_step else (
            lambda epoch, steps: None)

        watch.start()
        batches, test_images = self.prepare_data()
        self.lookahead.start()                  # the slow copy starts whitened
        watch.stop()

        test = TestSet(self.forward, test_images, self.data.test_labels, recipe)
        target = TargetCheck(target_acc, test)
        for epoch in range(epochs):
            watch.start()
            result.diverged = self._train_epoch(batches, epoch, total, watch, tell)
            tta_check = None if result.diverged else target.measure()
            watch.stop()
            if not self.execution.check_each_step:
                tell(epoch, step.steps_taken)

            train_loss, train_acc = step.epoch_means()
            result.diverged = result.diverged or has_diverged(train_loss)
            if result.diverged:
                break
            row = EpochRow(run, epoch + 1, train_loss, train_acc, None, None, watch.seconds,
                           tta_check)
            if evaluate_epochs or epoch == epochs - 1 or target.reached(tta_check):
                test.evaluate_epoch(row, result)
            result.epochs.append(row)
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

    def prepare_data(self):
        """The training batches and the normalised test images; the whitening layer is set
        from the training images' patches (all of it timed)."""
        recipe, data, how = self.recipe, self.data, self.execution
        train_images = normalize(data.train_images, how.dtype, how.memory_format)
        test_images = normalize(data.test_images, how.dtype, how.memory_format)
        init_whitening(self.net, train_images[:recipe.whiten_init_images], recipe.whiten_eps)
        # `batches` keeps a padded copy of the training images, and nothing else does.
        batches = TrainBatches(train_images, data.train_labels, recipe, how.memory_format)
        return batches, test_images

    def _train_epoch(self, batches, epoch, total, watch, tell):
        """One pass over the epoch's batches, stopping at the run's last step; True if the run
        diverged. Lookahead runs between steps, outside the (captured) step, every few steps.
        Where the execution checks each step (a CPU), the watch stops after each step for the
        divergence read and `tell(epoch, steps_taken)`, so neither is timed; elsewhere nothing
        but the method runs here, and the divergence is read once per epoch, untimed."""
        step = self.step
        images, batch_indices = batches.epoch(epoch)
        for index in batch_indices:
            step.load(images, batches.labels, index)
            loss = step()
            self.lookahead.after_step(step.steps_taken)
            if step.steps_taken >= total:
                self.lookahead.finish()
            if self.execution.check_each_step:
                watch.stop()
                diverged = has_diverged(loss.item() / len(index))
                if not diverged:
                    tell(epoch, step.steps_taken)
                watch.start()
                if diverged:
                    return True
            if step.steps_taken >= total:
                break
        return False


def stepped_down(how, error):
    """(the Execution to try after `error` in the warm-up, one line saying so), or None when
    compile and capture are off already. If compiling failed (or capture is off), the step is
    captured without compile; if capturing failed, it runs without capture."""
    if how.compile and (not how.capture or from_compiling(error)):
        what, off, flag = "compile", {"compile": False}, "compile=false"
        then = "capturing the step without it" if how.capture else "running eagerly"
    elif how.capture:
        what, off, flag = "capture", {"capture": False}, "capture_step=false"
        then = "running the compiled step uncaptured" if how.compile else "running eagerly"
    else:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]    # "... raised:"
    return dataclasses.replace(how, **off), (
        f"{what} failed on this device ({type(error).__name__}: {first[:200]}); {then} "
        f"instead (--set {flag} skips it)")


def give_back_cache(how):
    """After the warm-up: wait for the device and give back what compiling and autotuning
    cached, so that a timed run's peak reserved memory is what the run itself holds (the
    captured graphs' pool stays)."""
    if how.cuda:
        torch.cuda.synchronize(how.device)
        torch.cuda.empty_cache()
    elif how.kind == "mps":
        torch.mps.synchronize()
        torch.mps.empty_cache()


def _chain(error):
    """`error` and its causes (or contexts), outermost first."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def from_compiling(error):
    """Whether torch.compile's machinery (dynamo, inductor, Triton) raised `error` or one of
    its causes: dynamo wraps what goes wrong while compiling in its own exceptions."""
    return any(type(link).__module__.startswith(("torch._dynamo", "torch._inductor", "triton"))
               for link in _chain(error))


def out_of_memory(error):
    """`error` as an out-of-memory: itself if it is one; else, when one is in its chain of
    causes or its text says so (a compile error that met one while autotuning), a new
    torch.cuda.OutOfMemoryError with that one's text ("... Tried to allocate 2.00 GiB ...");
    else None."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return error
    chain = _chain(error)
    found = [link for link in chain if isinstance(link, torch.cuda.OutOfMemoryError)] or [
        link for link in chain if "out of memory" in str(link).lower()]
    return torch.cuda.OutOfMemoryError(str(found[0])) if found else None


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


# A run whose mean loss per image passes this has diverged: a healthy one starts near
# ln(10) = 2.3 and falls, while a blown-up one jumps to NaN, inf, or millions.
DIVERGED_LOSS = 100.0


def has_diverged(loss_per_image):
    return not loss_per_image < DIVERGED_LOSS          # also True for NaN


class TestSet:
    """The normalised test images and the run's two ways of evaluating them."""

    def __init__(self, forward, images, labels, recipe):
        self.forward, self.images, self.labels, self.recipe = forward, images, labels, recipe

    def tta_accuracy(self):
        """The recipe's TTA accuracy, as a device tensor (reading it is the caller's sync)."""
        return tta_accuracy(self.forward, self.images, self.labels, self.recipe)

    def evaluate_epoch(self, row, result):
        """Fill `row`'s plain test loss and accuracy; untimed, its seconds are added to
        result.eval_time_s."""
        tick = time.perf_counter()
        accuracy, loss = plain_evaluation(self.forward, self.images, self.labels, self.recipe)
        row.val_loss, row.val_acc = loss.item(), accuracy.item()
        result.eval_time_s += time.perf_counter() - tick


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
    """Accumulates seconds between start() and stop() on a device of `kind` ("cuda", "mps" or
    "cpu"): on a CUDA GPU with events, waiting for the queued work to finish at each stop; on
    Apple's MPS by the clock, waiting for the device at each start and stop."""

    def __init__(self, kind):
        self.cuda, self.mps = kind == "cuda", kind == "mps"
        self.seconds = 0.0

    def start(self):
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
            return
        if self.mps:
            torch.mps.synchronize()     # what was queued before is not this region's
        self._begin = time.perf_counter()

    def stop(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize()
            self.seconds += self._begin.elapsed_time(end) / 1000
            return
        if self.mps:
            torch.mps.synchronize()
        self.seconds += time.perf_counter() - self._begin


class PeakMemory:
    """The peak GPU memory of one run (nothing on a CPU, nor on MPS, which keeps no peak)."""

    def __init__(self, how):
        self.device, self.cuda = how.device, how.cuda
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def record(self, result):
        if self.cuda:
            result.peak_mem_allocated = torch.cuda.max_memory_allocated(self.device)
            result.peak_mem_reserved = torch.cuda.max_memory_reserved(self.device)


# Records: what a run returns.

@dataclass
class EpochRow:
    run: int
    epoch: int
    train_loss: float   # mean per image over the epoch, label-smoothed as in training
    train_acc: float    # on the augmented training batches
    val_loss: float     # plain (no TTA) test loss, label-smoothed like train_loss; None when
                        # the epoch was not evaluated (accuracy mode)
    val_acc: float      # plain (no TTA) test accuracy; None likewise
    time_s: float       # timed seconds so far in this run: the clock whose total, at the
                        # run's end, is RunResult.train_time_s
    tta_acc: float = None  # only with a target: the timed TTA check at this epoch's end


@dataclass
class RunResult:
    run: int
    seed: int
    tta_acc: float = math.nan     # the reported accuracy
    val_acc: float = math.nan     # plain accuracy of the final network
    train_time_s: float = math.nan  # the run's timed seconds (docs/timing.md)
    eval_time_s: float = 0.0      # untimed per-epoch evaluation, summed over epochs
    epochs: list = field(default_factory=list)
    diverged: bool = False
    time_to_target: float = None  # timed seconds until the target TTA accuracy, if reached
    peak_mem_allocated: int = 0   # bytes, GPU only
    peak_mem_reserved: int = 0

"""Several runs of one recipe: load the data once, warm up once, then the timed runs.

This is the Python API behind `python main.py` (and `hlb.train`): it returns a Record and
prints nothing itself; progress goes to an optional listener (see hlb.report.Table).
"""

import os
import re
import time
from dataclasses import dataclass, field

import torch

from hlb.dataset import CIFAR10_TAR_MD5, CIFAR10_URL, default_data_dir, load_cifar10
from hlb.errors import HlbError, UsageError
from hlb.model import build_net
from hlb.recipes import Recipe, get_recipe, override
from hlb.stats import Summary, summarize
from hlb.step import TrainStep
from hlb.train import to_device, train_run


class Stopped(Exception):
    """The runs stopped early; `record` holds the runs that finished, `error` says why
    (a one-line HlbError, or None for Ctrl-C)."""

    def __init__(self, record, error=None):
        super().__init__(str(error) if error else "interrupted")
        self.record = record
        self.error = error


def out_of_memory_error(exc, recipe):
    """A one-line HlbError for a CUDA out-of-memory, naming the size and what to try."""
    asked = re.search(r"Tried to allocate [0-9.]+ [KMGT]?i?B", str(exc))
    half = max(1, recipe.batch_size // 2)
    return HlbError(
        f"out of GPU memory ({asked.group(0) if asked else 'allocation failed'}) at batch_size "
        f"{recipe.batch_size}; try --set batch_size={half} --set eval_batch_size="
        f"{max(1, recipe.eval_batch_size // 2)}, or a GPU with more free memory")


@dataclass
class Record:
    recipe: Recipe
    device: str
    data_fingerprint: str
    seed: int
    warmup_s: float = 0.0          # untimed warm-up run (cudnn autotuning, compilation)
    stopped: str = None            # why the runs stopped early, if they did
    target_acc: float = None       # runs stop at the first epoch whose TTA accuracy reaches it
    results: list = field(default_factory=list)
    summary: Summary = None
    wall_s: float = 0.0            # the whole call, loading and warm-up included


def resolve_device(name=None):
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cuda", "cpu"):
        raise UsageError(f"unknown device {name!r}; choose cuda or cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    return name


class Quiet:
    """A listener that prints nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Bench:
    """One recipe made ready on a device (data placed, network built and maybe compiled),
    then run as often as asked. Several benches can take turns, as `compare` does."""

    def __init__(self, recipe, device, cifar, seed):
        self.recipe = recipe
        self.device = device               # "cuda", "cuda:3" (one GPU of many) or "cpu"
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.data = to_device(cifar, recipe, device)
        self.net = build_net(recipe, device)
        self.forward = (torch.compile(self.net, mode=recipe.compile_mode)
                        if self.cuda and recipe.compile else self.net)
        self.step = TrainStep(self.net, recipe, device, self.forward)
        # The record names the kind of device; which GPU ran which run is the launcher's.
        self.record = Record(recipe=recipe, device=torch.device(device).type,
                             data_fingerprint=cifar.fingerprint, seed=seed)

    def warmup(self, listener):
        """One untimed run of the same shapes, so cudnn.benchmark and compilation happen
        here and not in a timed run (GPU only: the CPU has nothing to warm up)."""
        if not self.cuda:
            return
        listener.warmup_started()
        tick = time.perf_counter()
        if self.recipe.capture_step:
            self.step.capture()            # the CPU ignores capture_step: it has no warm-up
        train_run(self.recipe, self.data, self.net, self.device, seed=self.record.seed + 2**31,
                  run=-1, forward=self.forward, step=self.step)
        torch.cuda.synchronize(self.device)
        self.record.warmup_s = time.perf_counter() - tick
        listener.warmup_finished(self.record.warmup_s)

    def run(self, i, runs, listener, target_acc=None):
        listener.run_started(i, runs)
        result = train_run(self.recipe, self.data, self.net, self.device,
                           seed=self.record.seed + i, run=i, forward=self.forward,
                           step=self.step, on_epoch=listener.epoch, on_step=listener.step,
                           target_acc=target_acc)
        self.record.results.append(result)
        listener.run_finished(result)
        return result


def run_benches(benches, runs, listeners, target_acc=None):
    """Warm each bench up, then runs 0..runs-1, taking turns run by run (so slow drifts of
    the machine hit every bench alike); returns their records.

    Ctrl-C or a GPU out-of-memory raises Stopped with the finished runs kept."""
    wall = time.perf_counter()
    try:
        for bench, listener in zip(benches, listeners):
            bench.warmup(listener)
        for i in range(runs):
            for bench, listener in zip(benches, listeners):
                bench.run(i, runs, listener, target_acc)
    except KeyboardInterrupt:
        error = None
    except torch.cuda.OutOfMemoryError as e:
        error = out_of_memory_error(e, benches[0].recipe)
    else:
        error = False
    return close_records([bench.record for bench in benches], error, wall, target_acc)


def close_records(records, error, wall, target_acc=None):
    """Summarize the records; raise Stopped if `error` is not False (None meaning Ctrl-C)."""
    for record in records:
        record.target_acc = target_acc
        record.summary = summarize(record.results)
        record.wall_s = time.perf_counter() - wall
        if error is not False:
            record.stopped = str(error) if error else "interrupted"
    if error is not False:
        raise Stopped(records[0] if len(records) == 1 else records, error)
    return records


def run_recipe(recipe, runs, device, seed, cifar, listener=None, target_acc=None):
    """Warm up (GPU only), then `runs` timed runs; run i uses seed `seed + i`."""
    bench = Bench(recipe, device, cifar, seed)
    return run_benches([bench], runs, [listener or Quiet()], target_acc)[0]


def prepare(recipe, runs, device, overrides=()):
    """Check the arguments of a training call; returns (recipe, device)."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    recipe = override(recipe, overrides)
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, not {runs}")
    return recipe, resolve_device(device)


def load_data(data_dir=None):
    # A mirror (HLB_CIFAR10_URL) may repack the archive (HLB_CIFAR10_MD5); the MD5s of the
    # files inside are checked against the official values all the same.
    url = os.environ.get("HLB_CIFAR10_URL") or CIFAR10_URL
    tar_md5 = os.environ.get("HLB_CIFAR10_MD5") or CIFAR10_TAR_MD5
    return load_cifar10(data_dir or default_data_dir(), url=url, tar_md5=tar_md5)


def train(recipe="94", runs=1, device=None, seed=0, data_dir=None, overrides=(),
          listener=None, target_acc=None):
    """Train `runs` times and return a Record (the notebook entry point).

    `recipe` is a name from hlb.recipes.RECIPES or a Recipe; `overrides` are "key=value"
    strings as on the command line; with `target_acc`, each run stops at the first epoch
    whose TTA accuracy reaches it (see hlb.train.train_run).
    """
    wall = time.perf_counter()
    recipe, device = prepare(recipe, runs, device, overrides)
    try:
        record = run_recipe(recipe, runs, device, seed, load_data(data_dir), listener,
                            target_acc)
    except Stopped as e:
        e.record.wall_s = time.perf_counter() - wall
        raise
    record.wall_s = time.perf_counter() - wall
    return record

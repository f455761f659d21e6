"""Several runs of one or more recipes: load the data once, warm up once, then the timed runs.

One runner, `run_rounds`, for one process and for torchrun. Runs go in rounds: a round is one
run index in one process (LocalScheduler), or one per process under torchrun
(TorchrunScheduler, run i on rank i % world size), and in a round every recipe runs that
index, so slow drifts of the machine hit every recipe alike and `compare` stays paired. After
each round the results of every process are gathered in run order and `on_round` may look at
them (and ask to stop some recipes). Run i always has seed `seed + i`, whatever the scheduler.

This is the Python API behind `python main.py` (and `hlb.train`): it returns Records and
prints nothing itself; progress goes to listeners (hlb.bench.report.Listener).
"""

import dataclasses
import os
import re
import time
from bisect import insort
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import torch

from hlb.bench import dist
from hlb.bench.overrides import override
from hlb.bench.report import Listener
from hlb.bench.stats import Summary, summarize
from hlb.data import CIFAR10_TAR_MD5, CIFAR10_URL, default_data_dir, load_cifar10
from hlb.errors import AlreadyReported, HlbError, Unexpected, UsageError
from hlb.execution import execution, missing_kernels
from hlb.recipes import Recipe, get_recipe
from hlb.train import EpochRow, RunResult, prepare


class Stopped(Exception):
    """The runs stopped early. `records` (a list, one per recipe) hold the runs that
    finished; `error` says why: KeyboardInterrupt for Ctrl-C or SIGTERM, else an HlbError
    (Unexpected for an exception no code path expected)."""

    def __init__(self, records, error):
        super().__init__(str(error) or "interrupted")
        self.records = records
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
    overrides: list = field(default_factory=list)  # the "key=value" texts, as given
    warmup_s: float = 0.0          # untimed warm-up run (cudnn autotuning, compilation)
    accuracy_only: bool = False    # no per-epoch evaluation; times not reported (shared GPUs)
    fallback: str = None           # why compile or capture were turned off, if they were
                                   # (under torchrun each rank's, named)
    execution: dict = None         # what this device runs and why (Execution.chosen)
    stopped: str = None            # why the runs stopped early, if they did
    target_acc: float = None       # runs stop at the first epoch whose TTA accuracy reaches it
    runs_asked: int = None         # runs 0..runs_asked-1 were asked for (a resume runs the rest)
    resumed_from: list = field(default_factory=list)   # earlier invocations whose runs are kept
    results: list = field(default_factory=list)     # in run order
    summary: Summary = None
    wall_s: float = 0.0            # the whole call, loading and warm-up included
    # The network as the last run in this process left it (hlb.save keeps it), and that
    # run's index; neither is part of the JSON record.
    net: torch.nn.Module = field(default=None, repr=False)
    net_run: int = None


def resolve_device(name=None):
    """The device to run on: `name`, else a CUDA GPU, else Apple's MPS, else the CPU; an
    HlbError, before any data, for a CUDA GPU that the installed torch has no kernels for."""
    mps = torch.backends.mps.is_available()
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    elif name not in ("cuda", "mps", "cpu"):
        raise UsageError(f"unknown device {name!r}; choose cuda, mps or cpu")
    elif name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    elif name == "mps" and not mps:
        raise UsageError("--device mps: torch sees no Apple GPU (MPS needs macOS on Apple "
                         "silicon and torch's macOS wheel); use --device cpu")
    for index in range(torch.cuda.device_count() if name == "cuda" else 0):
        problem = missing_kernels(f"cuda:{index}")
        if problem:
            raise HlbError(problem)
    return name


class PreparedRecipe:
    """One recipe made ready on a device (hlb.train.prepare), run as often as asked; its
    `record` collects the results."""

    def __init__(self, recipe, device, cifar, seed, overrides=(), accuracy_only=False):
        self.recipe = recipe
        self.prepared = prepare(recipe, cifar, device)
        # The record names the kind of device; which GPU ran which run is the launcher's.
        self.record = Record(recipe=recipe, device=torch.device(device).type,
                             data_fingerprint=cifar.fingerprint, seed=seed,
                             overrides=list(overrides), accuracy_only=accuracy_only,
                             execution=self.prepared.execution.chosen(),
                             net=self.prepared.net)

    def warmup(self, listener):
        """The untimed warm-up, where the device needs one (hlb.train.PreparedRun.warmup)."""
        if not self.prepared.execution.warmup:
            return
        listener.warmup_started()
        self.record.warmup_s = self.prepared.warmup()
        self.record.fallback = self.prepared.fallback   # shown once every rank's is in
        listener.warmup_finished(self.record.warmup_s)

    def run(self, i, runs, listener, target_acc=None):
        """Run i (seed `seed + i`); returns its RunResult, which the runner files in the
        record and then shows (`listener.run_finished`)."""
        listener.run_started(i, runs)
        result = self.prepared.run(self.record.seed + i, run=i, on_epoch=listener.epoch,
                                   on_step=listener.step, target_acc=target_acc,
                                   evaluate_epochs=not self.record.accuracy_only)
        self.record.net_run = i
        return result


def load_data(data_dir=None):
    # A mirror (HLB_CIFAR10_URL) may repack the archive (HLB_CIFAR10_MD5); the MD5s of the
    # files inside are checked against the official values all the same.
    url = os.environ.get("HLB_CIFAR10_URL") or CIFAR10_URL
    tar_md5 = os.environ.get("HLB_CIFAR10_MD5") or CIFAR10_TAR_MD5
    return load_cifar10(data_dir or default_data_dir(), url=url, tar_md5=tar_md5)


class LocalScheduler:
    """All runs in this process, one run index per round."""

    size, rank, leader = 1, 0, True

    def __init__(self, device):
        self.device = device

    def rounds(self, pending):
        """The run indices `pending` cut into rounds of one index per process."""
        return [pending[k:k + self.size] for k in range(0, len(pending), self.size)]

    def mine(self, indices):
        """This process's run index in a round (None when the round has none for it)."""
        return indices[self.rank] if self.rank < len(indices) else None

    def gather(self, payload):
        """Every process's payload, in rank order."""
        return [payload]

    def in_flight(self, payload):
        """What to keep of a round that was stopped before it was gathered: here all that
        finished, since this process alone makes the round."""
        return [payload]

    def agree(self, error=None):
        """Stop every process if any failed (`error`, an HlbError, or None)."""
        if error is not None:
            raise error

    def on_leader(self, work):
        """`work()` on rank 0 alone, its value (JSON values) given to every process; an
        HlbError there stops every process."""
        return work()

    def load_data(self, data_dir=None):
        return load_data(data_dir)

    def describe(self):
        """What a record keeps about the processes (nothing for one)."""
        return None

    def lost(self, exc, when):
        """The one-line error for a process that was lost (none here)."""
        return None

    def interrupted(self):
        pass


class TorchrunScheduler(LocalScheduler):
    """Runs spread over torchrun's processes through a joined hlb.bench.dist.Group: run i goes to
    rank i % world size. Results travel as JSON text, never as pickles."""

    def __init__(self, group):
        super().__init__(group.device)
        self.group = group
        self.size, self.rank, self.leader = group.world.size, group.world.rank, group.leader

    def gather(self, payload):
        as_json = {**payload, "results": [r and dataclasses.asdict(r)
                                          for r in payload["results"]]}
        return [{**p, "results": [r and _to_result(r) for r in p["results"]]}
                for p in self.group.exchange(as_json)]

    def in_flight(self, payload):
        return []       # the other ranks' runs of the round never arrived: keep whole rounds

    def agree(self, error=None):
        self.group.agree(error)

    def on_leader(self, work):
        value, error = None, None
        if self.leader:
            try:
                value = work()
            except HlbError as e:
                error = e
            except Exception as e:
                with suppress(HlbError):
                    self.agree(Unexpected.wrapping(e))     # the others stop, not wait
                raise
        self.agree(error)
        return self.group.exchange(value)[0]

    def load_data(self, data_dir=None):
        """CIFAR-10, prepared once: rank 0 loads (downloads, verifies, caches) while the others
        wait; then the first rank of every other machine (a cache hit on a shared disk, its
        own preparation on a local one); then the rest, from the cache."""
        world = self.group.world
        turn = 0 if self.leader else 1 if world.local_rank == 0 else 2
        cifar = None
        for phase in range(3):
            error = None
            if phase == turn:
                try:
                    cifar = load_data(data_dir)
                except HlbError as e:
                    error = e
            self.agree(error)
        return cifar

    def describe(self):
        return self.group.describe()

    def lost(self, exc, when):
        return self.group.lost(exc, when)

    def interrupted(self):
        self.group.stopping = True


def _to_result(data):
    return RunResult(**{**data, "epochs": [EpochRow(**row) for row in data["epochs"]]})


@contextmanager
def scheduler_for(device, share_gpus=False):
    """The scheduler of this process: torchrun's when under torchrun (joining its process
    group for the block, `share_gpus` as hlb.bench.dist.joined takes it), else a local one."""
    with dist.joined(device, share_gpus) as group:
        yield LocalScheduler(device) if group is None else TorchrunScheduler(group)


def _failure(exc, recipe):
    """An exception from a run, as JSON values that can travel to rank 0."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return {"text": str(out_of_memory_error(exc, recipe)), "exit_code": 1}
    if isinstance(exc, HlbError):
        return {"text": str(exc), "exit_code": exc.exit_code}
    error = Unexpected.wrapping(exc)
    return {"text": str(error), "exit_code": 1, "traceback": error.traceback}


def _raise_first(payloads, scheduler):
    """If any process failed, every process raises the first failure: rank 0 to report it
    (naming the rank when it is not 0), the others as AlreadyReported."""
    failed = [(rank, p["failure"]) for rank, p in enumerate(payloads) if p["failure"]]
    if not failed:
        return
    rank, failure = failed[0]
    text = failure["text"] if rank == 0 else f"rank {rank}: {failure['text']}"
    if not scheduler.leader:
        raise AlreadyReported(text, failure["exit_code"])
    if "traceback" in failure:
        raise Unexpected(text, failure["traceback"])
    raise HlbError(text, failure["exit_code"])


def _guarded(work, recipe):
    """Run `work()`; returns (its value, None) or (None, the failure). Ctrl-C and SIGTERM
    pass through: every process gets them."""
    try:
        return work(), None
    except Exception as e:
        return None, _failure(e, recipe)


def _warm_up(prepared, listeners, scheduler):
    def work():
        for p, listener in zip(prepared, listeners):
            p.warmup(listener)

    _, failure = _guarded(work, prepared[0].recipe)
    payloads = scheduler.gather({"results": [], "failure": failure,
                                 "warmup_s": [p.record.warmup_s for p in prepared],
                                 "fallback": [p.record.fallback for p in prepared]})
    for j, (p, listener) in enumerate(zip(prepared, listeners)):
        p.record.warmup_s = max(payload["warmup_s"][j] for payload in payloads)
        notes = by_rank([payload["fallback"][j] for payload in payloads])
        p.record.fallback = " | ".join(notes) or None
        for note in notes:
            listener.notice(note)
    _raise_first(payloads, scheduler)


def by_rank(notes):
    """Each rank's note (None: none), one line per distinct note, naming its ranks when
    there are several processes."""
    ranks = {}
    for rank, note in enumerate(notes):
        if note:
            ranks.setdefault(note, []).append(str(rank))
    if len(notes) == 1:
        return list(ranks)
    return [f"rank{'s' if len(who) > 1 else ''} {', '.join(who)}: {note}"
            for note, who in ranks.items()]


def _run_mine(prepared, active, i, runs, listeners, target_acc, payload):
    """This process's run i of every active recipe that lacks it, into `payload`, each
    result stored there before its listener hears it finished."""
    for j, (p, listener) in enumerate(zip(prepared, listeners)):
        if i is None or j not in active or _has(p.record, i):
            continue
        result, payload["failure"] = _guarded(lambda: p.run(i, runs, listener, target_acc),
                                              p.recipe)
        if payload["failure"]:
            return
        payload["results"][j] = result
        listener.run_finished(result)


def _has(record, i):
    return any(r.run == i for r in record.results)


def _take(records, payloads, runs, listeners, scheduler):
    """File the round's results in run order; rank 0 shows the other ranks' runs as if they
    had run here."""
    for rank, payload in enumerate(payloads):
        for record, listener, result in zip(records, listeners, payload["results"]):
            if result is None:
                continue
            insort(record.results, result, key=lambda r: r.run)
            if rank != scheduler.rank:
                listener.run_started(result.run, runs)
                for row in result.epochs:
                    listener.epoch(row)
                listener.run_finished(result)
    _raise_first(payloads, scheduler)


def _file(records, payloads):
    for payload in payloads:
        for record, result in zip(records, payload["results"]):
            if result is not None and not _has(record, result.run):
                insort(record.results, result, key=lambda r: r.run)


def _summarize(records, wall, target_acc):
    for record in records:
        record.target_acc = target_acc
        record.summary = summarize(record.results)
        record.wall_s = time.perf_counter() - wall


def _ask_to_stop(on_round, records, finished, runs, scheduler):
    """Rank 0 calls `on_round`; every process learns the recipes it asked to stop."""
    stop, failure = [], None
    if scheduler.leader:
        for record in records:
            if not finished:
                record.stopped = f"unfinished: {len(record.results)} of {runs} run(s) gathered"
        stop, failure = _guarded(lambda: sorted(on_round(records, finished) or ()),
                                 records[0].recipe)
        for record in records:
            record.stopped = None
    payloads = scheduler.gather({"results": [], "failure": failure, "stop": stop or []})
    _raise_first(payloads, scheduler)
    return set(payloads[0]["stop"])


def _stop_error(exc, scheduler, where):
    """Why the runs stopped, as the error Stopped carries; None for what is not ours."""
    if isinstance(exc, KeyboardInterrupt):
        scheduler.interrupted()
        return exc
    if isinstance(exc, HlbError):
        return exc
    lost = scheduler.lost(exc, where)
    if lost is not None or not isinstance(exc, Exception):
        return lost
    return Unexpected.wrapping(exc)


def run_rounds(prepared, runs, listeners, scheduler, target_acc=None, on_round=None,
               stopped=()):
    """Warm each prepared recipe up, then runs 0..runs-1 in the scheduler's rounds; return
    their Records (every process returns every run, gathered).

    Rank 0 prints through `listeners` (one per recipe); the other ranks print nothing.
    `on_round(records, finished)` runs on rank 0 after each round (give it on every rank
    alike): the records hold the runs gathered so far, in run order, marked `stopped`
    "unfinished: ..." unless `finished` (no run left); it may return the indices of recipes
    to stop from the next round on (their records keep their finished runs). The recipes
    in `stopped` (indices; the same on every process) are stopped from the start.

    A run already in a record (a resumed invocation puts them there before the call) is not
    run again; new results are filed around it in run order.

    Ctrl-C, SIGTERM, an out-of-memory or any other failure in any process, or a lost worker,
    raise Stopped with the finished runs.
    """
    wall = time.perf_counter()
    records = [p.record for p in prepared]
    listeners = listeners if scheduler.leader else [Listener() for _ in prepared]
    active, where = set(range(len(prepared))) - set(stopped), "before the runs"
    rounds = scheduler.rounds([i for i in range(runs)
                               if not all(_has(records[j], i) for j in active)])
    for j, (p, listener) in enumerate(zip(prepared, listeners)):
        p.record.runs_asked = runs
        mine = [scheduler.mine(indices) for indices in rounds] if j in active else []
        listener.planned(sum(i is not None and not _has(p.record, i) for i in mine),
                         p.recipe.total_steps())
    payload = None
    try:
        if rounds:              # a resumed invocation may have nothing left to run
            _warm_up(prepared, listeners, scheduler)
        for number, indices in enumerate(rounds, 1):
            where = f"in round {number} of {len(rounds)}"
            payload = {"results": [None] * len(prepared), "failure": None}
            _run_mine(prepared, active, scheduler.mine(indices), runs, listeners, target_acc,
                      payload)
            _take(records, scheduler.gather(payload), runs, listeners, scheduler)
            payload = None
            _summarize(records, wall, target_acc)
            if on_round:
                active -= _ask_to_stop(on_round, records, number == len(rounds), runs,
                                       scheduler)
            if not active:
                break
    except BaseException as e:
        error = _stop_error(e, scheduler, where)
        if error is None:
            raise
        if payload:
            _file(records, scheduler.in_flight(payload))
        _summarize(records, wall, target_acc)
        for record in records:
            record.stopped = str(error) or "interrupted"
        raise Stopped(records, error) from None
    _summarize(records, wall, target_acc)
    return records


def run_recipe(recipe, runs, device, seed, cifar, listener=None, target_acc=None,
               overrides=(), started=None):
    """Warm up (GPU only), then `runs` timed runs in this process; run i uses seed
    `seed + i`. Returns the Record; its wall_s counts from `started` (a perf_counter
    reading: when the caller began, loading included), else from this call."""
    wall = time.perf_counter() if started is None else started
    prepared = PreparedRecipe(recipe, device, cifar, seed, overrides)
    try:
        return run_rounds([prepared], runs, [listener or Listener()], LocalScheduler(device),
                          target_acc)[0]
    finally:
        prepared.record.wall_s = time.perf_counter() - wall


def checked_call(recipe, runs, device, overrides=()):
    """Check the arguments of a training call; returns (recipe, device)."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    recipe = override(recipe, overrides)
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, not {runs}")
    device = resolve_device(device)
    execution(recipe, device)           # refuses what the device cannot run, before any data
    return recipe, device


def train(recipe="94", runs=1, device=None, seed=0, data_dir=None, overrides=(),
          listener=None, target_acc=None):
    """Train `runs` times in this process and return a Record (the notebook entry point).

    `recipe` is a name from hlb.recipes.RECIPES or a Recipe; `overrides` are "key=value"
    strings as on the command line; with `target_acc`, each run stops at the first epoch
    whose TTA accuracy reaches it (see hlb.train.PreparedRun.run). Stopped (with the finished
    runs) when the runs end early.
    """
    started = time.perf_counter()
    recipe, device = checked_call(recipe, runs, device, overrides)
    return run_recipe(recipe, runs, device, seed, load_data(data_dir), listener, target_acc,
                      overrides, started)

"""What the user sees and keeps: the live table, the summary, and the JSON record."""

import dataclasses
import json
import math
import platform
import socket
import sys
import time

import torch

from hlb import __version__
from hlb.bench.code import running_code
from hlb.bench.work import run_work
from hlb.files import write_atomic

COLUMNS = [("run", 5), ("epoch", 5), ("train_loss", 10), ("train_acc", 9), ("val_loss", 8),
           ("val_acc", 7), ("tta_acc", 7), ("time_s", 8)]


def _cell(value, width):
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.4f}"
    else:
        text = str(value)
    return text.rjust(width)


def format_row(values):
    return "| " + " | ".join(_cell(values.get(name), w) for name, w in COLUMNS) + " |"


class Listener:
    """What a runner tells about its progress (hlb.bench.runs.run_rounds); each method does
    nothing here, so a listener overrides only what it shows."""

    def planned(self, runs, steps):
        """This process will run `runs` more runs of `steps` steps each (told before them)."""

    def warmup_started(self):
        pass

    def warmup_finished(self, seconds):
        pass

    def notice(self, text):
        """Something the user should know about the runs (a fallback), in one line."""

    def run_started(self, run, runs):
        pass

    def step(self, run, epoch, step, total):
        pass

    def epoch(self, row):
        pass

    def run_finished(self, result):
        pass


LONG_S = 600.0      # an invocation estimated to take longer than this says so early


def duration(seconds):
    """Seconds as a person says them: 45 s, 12 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def clock(seconds):
    """Seconds as a clock shows them: 4:05, 1:02:03."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """The steps of one invocation, arm by arm, and the time left at each arm's own speed.

    An arm is one recipe of the invocation (main's one, compare's two, a sweep's base and
    cells, verify's entry and baseline); the arms of an invocation share one Progress. Each
    arm is timed on the wall clock between its own progress callbacks within a run, from the
    run's start on (whitening and the per-epoch evaluation count, the other arms' runs not),
    so its speed is its own and revised as it runs. An arm not yet measured is predicted from
    the measured arms' seconds per FLOP and its own work (hlb.bench.work); the final TTA
    evaluation is added by its work too. The first estimate comes once an arm has run for
    `measure_s` seconds (one step of recipe 94 on a CPU: about 16 s in); it is said when the
    time left is long, and said again whenever the time left turns out `revise` times more
    or less than the last said (an arm slower than predicted)."""

    def __init__(self, quicker=None, long_s=LONG_S, measure_s=2.0, revise=1.5,
                 clock=time.perf_counter, work=None):
        self.quicker = quicker      # the quicker alternative a long estimate names
        self.long_s, self.measure_s, self.revise = long_s, measure_s, revise
        self.clock = clock
        self.work = work or run_work     # recipe -> hlb.bench.work.Work
        self.arms = []
        self.no_work = False        # an arm's work could not be counted: steps weigh alike
        self._said = None           # (seconds left said, clock then)

    def arm(self, label="", recipe=None):
        """A new arm of this invocation: `recipe` gives its work (None: steps weigh alike)."""
        arm = Arm(self, label.strip(), recipe)
        self.arms.append(arm)
        return arm

    @property
    def planned(self):
        return sum(arm.planned for arm in self.arms)

    def seconds_per_flop(self):
        """Over the measured arms; None before one is measured."""
        measured = [arm for arm in self.arms if arm.measured()]
        flops = sum(arm.steps * arm.per_step() for arm in measured)
        return sum(arm.seconds for arm in measured) / flops if measured else None

    def left(self):
        """Seconds left over every arm; None before an arm is measured."""
        if self.seconds_per_flop() is None:
            return None
        return sum(arm.left() for arm in self.arms)

    def estimate(self):
        """The estimate line when it is due (see the class), else None."""
        left, now = self.left(), self.clock()
        if left is None or self.planned <= sum(arm.done for arm in self.arms):
            return None
        if self._said is None:
            if left < self.long_s:
                return None
        else:
            expected = max(self._said[0] - (now - self._said[1]), 0.0)
            if max(left, expected) < self.long_s or \
                    expected / self.revise <= left <= expected * self.revise:
                return None
        self._said = (left, now)
        parts = [arm.describe() for arm in self.arms if arm.planned > arm.done]
        if len(parts) > 3:
            measured = sum(arm.measured() for arm in self.arms)
            parts = [f"{sum(a.planned - a.done for a in self.arms)} steps left over "
                     f"{len(parts)} arms, {measured} measured, the rest predicted from their "
                     "work"]
        line = f"estimate: about {duration(left)} more on this device ({'; '.join(parts)})"
        return line + (f"; for a quick check use {self.quicker}" if self.quicker else "")


class Arm:
    """One arm's share of a Progress: its planned and done steps, and its own speed."""

    def __init__(self, progress, label, recipe):
        self.progress, self.label, self.recipe = progress, label, recipe
        self.clock = progress.clock
        self._work = None
        self.planned = self.done = 0
        self.seconds, self.steps = 0.0, 0   # timed between its own callbacks within runs
        self._mark = None           # (run, clock, steps) at its last callback or run start
        self._run = None            # [run, steps, total] of its run in progress

    def work(self):
        """Its Work; None when unknown (no recipe given, or one arm's could not be counted:
        then no arm's counts, so that the arms stay comparable)."""
        if self._work is None and self.recipe is not None and not self.progress.no_work:
            try:
                self._work = self.progress.work(self.recipe)
            except Exception:           # an estimate never stops a run
                self.progress.no_work = True
        return None if self.progress.no_work else self._work

    def per_step(self):
        """FLOPs of a training step (1 when the work is unknown: steps weigh alike)."""
        return self.work().per_step if self.work() else 1.0

    def plan(self, runs, steps):
        self.planned += runs * steps

    def run_started(self, run):
        self._mark = (run, self.clock(), 0)

    def step(self, run, steps, total):
        """`steps` of run `run` done; returns the estimate line when due."""
        now, mark = self.clock(), self._mark
        if mark and mark[0] == run and steps > mark[2]:
            self.seconds += now - mark[1]
            self.steps += steps - mark[2]
        before = self._run[1] if self._run and self._run[0] == run else 0
        self.done += steps - before
        self._mark, self._run = (run, now, steps), [run, steps, total]
        return self.progress.estimate()

    def run_finished(self, run):
        """A run of this process ended: steps it skipped (diverged, target reached) drop."""
        if self._run and self._run[0] == run:
            self.planned -= self._run[2] - self._run[1]
            self._run = None

    def measured(self):
        return self.steps > 0 and self.seconds >= self.progress.measure_s

    def seconds_per_step(self):
        """Its own when measured, else predicted from the measured arms and its work; with
        its final evaluation spread over its steps."""
        spf = self.progress.seconds_per_flop()
        own = self.seconds / self.steps if self.measured() else spf * self.per_step()
        work = self.work()
        return own * (1 + work.tta / work.train) if work else own

    def left(self):
        return (self.planned - self.done) * self.seconds_per_step()

    def describe(self):
        how = (f"measured over {self.steps} step(s)" if self.measured()
               else "predicted from its work")
        return (f"{self.label + ': ' if self.label else ''}{self.planned - self.done} steps "
                f"left at {1 / self.seconds_per_step():.3g} steps/s, {how}")

    def status(self):
        """", 3.2 steps/s, run 0:41 left, all 12:30 left" once measured, else ""."""
        if self._run is None or self.progress.seconds_per_flop() is None:
            return ""
        per_step = self.seconds_per_step()
        run_left = (self._run[2] - self._run[1]) * per_step
        return (f", {1 / per_step:.3g} steps/s, run {clock(run_left)} left, "
                f"all {clock(self.progress.left())} left")


class Watched(Listener):
    """Another listener (a sweep's lines) with an arm of a Progress: it says the estimate
    too, as a Table does."""

    def __init__(self, inner, arm, stream=None):
        self.inner, self.arm, self.stream = inner, arm, stream

    def planned(self, runs, steps):
        self.arm.plan(runs, steps)
        self.inner.planned(runs, steps)

    def warmup_started(self):
        self.inner.warmup_started()

    def warmup_finished(self, seconds):
        self.inner.warmup_finished(seconds)

    def notice(self, text):
        self.inner.notice(text)

    def run_started(self, run, runs):
        self.arm.run_started(run)
        self.inner.run_started(run, runs)

    def step(self, run, epoch, step, total):
        line = self.arm.step(run, step, total)
        if line:
            print(line, file=self.stream or sys.stdout, flush=True)
        self.inner.step(run, epoch, step, total)

    def epoch(self, row):
        self.inner.epoch(row)

    def run_finished(self, result):
        self.arm.run_finished(result.run)
        self.inner.run_finished(result)


class Table(Listener):
    """Prints one row per epoch and a TTA row per run, and (Progress) a line with an estimate
    when the invocation will be long.

    On a terminal, a status line (run, step, steps per second, time left for the run and for
    the invocation) is redrawn in place while an epoch trains and replaced by the epoch's row;
    when output goes to a file or pipe only the rows are written, one plain line each, never
    reprinting what came before.
    """

    def __init__(self, stream=None, live=None, min_interval=0.2, label=None, progress=None,
                 recipe=None):
        self.stream = stream or sys.stdout
        self.prefix = f"{label} " if label else ""     # tells interleaved arms apart
        self.live = self.stream.isatty() if live is None else live
        self.min_interval = min_interval
        # This table's arm of the invocation's Progress (`recipe` gives its work).
        self.progress = (progress or Progress()).arm(label or "", recipe)
        self._status_shown = False
        self._last_draw = None
        self._first_row_of_run = True
        self._header_shown = False     # the first run shown may not be run 0 (--resume)

    def _write(self, text, prefix=True):
        self._clear_status()
        self.stream.write((self.prefix if prefix else "") + text + "\n")
        self.stream.flush()

    def _clear_status(self):
        if self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False

    def header(self):
        line = format_row({name: name for name, _ in COLUMNS})
        self._write("-" * len(line))
        self._write(line)
        self._write("-" * len(line))

    def planned(self, runs, steps):
        self.progress.plan(runs, steps)

    def warmup_started(self):
        self._write("warm-up run (untimed: cudnn autotuning, compilation) ...")

    def warmup_finished(self, seconds):
        self._write(f"warm-up done in {seconds:.1f} s")

    def notice(self, text):
        self._write(f"note: {text}", prefix=False)

    def run_started(self, run, runs):
        self.progress.run_started(run)
        if not self._header_shown:
            self.header()
            self._header_shown = True
        self._first_row_of_run = True

    def step(self, run, epoch, step, total):
        estimate = self.progress.step(run, step, total)
        if estimate:
            self._write(estimate, prefix=False)       # about the invocation, not one arm
        if not self.live:
            return
        now = self.progress.clock()
        if self._last_draw is not None and now - self._last_draw < self.min_interval \
                and step < total:
            return
        self._last_draw = now
        self.stream.write(f"\r\033[K{self.prefix}  run {run} epoch {epoch + 1}: "
                          f"step {step}/{total}{self.progress.status()}")
        self.stream.flush()
        self._status_shown = True

    def epoch(self, row):
        values = dataclasses.asdict(row)
        if not self._first_row_of_run:
            values["run"] = None      # the run number is shown once per run
        self._first_row_of_run = False
        self._write(format_row(values))

    def run_finished(self, result):
        self.progress.run_finished(result.run)
        if result.diverged:
            # The limit is hlb.train.DIVERGED_LOSS; the command line's last line names it.
            self._write(f"| run {result.run} diverged in epoch {len(result.epochs) + 1} (loss "
                        f"NaN, infinite or too large) after {result.train_time_s:.2f} s; it is "
                        "left out of the averages")
            return
        line = format_row({"run": result.run if self._first_row_of_run else None,
                           "epoch": "tta", "tta_acc": result.tta_acc,
                           "time_s": result.train_time_s})
        self._write(line)
        self._write("-" * len(line))


def _fmt_bytes(n):
    return f"{n / 2**20:.0f} MiB"


def summary_lines(record):
    s = record.summary
    lines = [f"recipe {record.recipe.name} on {record.device}: {s.n} run(s) finished"
             + (f", {s.diverged} diverged" if s.diverged else "")
             + (f" (stopped early: {record.stopped})" if record.stopped else "")]
    if s.n:
        lines.append(f"  TTA accuracy  mean {s.acc_mean:.4f}  std {s.acc_std:.4f}  "
                     f"min {s.acc_min:.4f}  max {s.acc_max:.4f}")
        if not math.isnan(s.acc_ci95[0]):
            lines.append(f"  95% CI of the mean accuracy  [{s.acc_ci95[0]:.4f}, "
                         f"{s.acc_ci95[1]:.4f}]")
        if record.accuracy_only:
            lines.append("  time: not reported (accuracy mode: no per-epoch evaluation, and "
                         "processes may share a GPU)")
        else:
            lines.append(f"  time (s)      mean {s.time_mean:.3f}  std {s.time_std:.3f}  "
                         f"min {s.time_min:.3f}  max {s.time_max:.3f}")
            lines.append(f"  plain evaluation per epoch (untimed): "
                         f"{s.eval_time_per_epoch:.3f} s")
    if s.target_reached is not None:
        ttt = (f"; time to target mean {s.ttt_mean:.3f} s, std {s.ttt_std:.3f} s"
               if s.target_reached else "")
        lines.append(f"  target {record.target_acc:.4f} (TTA, checked at each epoch's end, "
                     f"inside the timed region): reached in {s.target_reached} of {s.n} "
                     f"run(s){ttt}")
    if record.device == "cuda":
        lines.append(f"  peak GPU memory: {_fmt_bytes(s.peak_mem_allocated)} allocated, "
                     f"{_fmt_bytes(s.peak_mem_reserved)} reserved")
        lines.append(f"  warm-up run (untimed): {record.warmup_s:.1f} s")
    lines.append(f"  wall clock of the whole invocation: {record.wall_s:.1f} s")
    return lines


def environment():
    """Where and with what the runs ran; `code` says which code (hlb.bench.code)."""
    cuda = torch.cuda.is_available()
    code = running_code()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "git_commit": code["git_commit"],
        "code": code,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def jsonable(value):
    # JSON has no NaN; write null instead so every reader can parse the record.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def record_dict(record, argv=None):
    results = [dataclasses.asdict(r) for r in record.results]
    epochs = [row for r in results for row in r.pop("epochs")]
    return jsonable({
        "format": "hlb-cifar10 record v1",
        "hlb_version": __version__,
        "argv": argv,
        "overrides": list(record.overrides),      # the "key=value" texts, as given
        "recipe": record.recipe.to_dict(),
        "device": record.device,
        "environment": environment(),
        "data_fingerprint": record.data_fingerprint,
        "seed": record.seed,
        "target_acc": record.target_acc,
        "runs_asked": record.runs_asked,
        "resumed_from": record.resumed_from,
        "stopped": record.stopped,
        "warmup_s": record.warmup_s,
        "fallback": record.fallback,
        "execution": record.execution,
        "accuracy_only": record.accuracy_only,
        "wall_s": record.wall_s,
        "epochs": epochs,
        "runs": results,
        "summary": dataclasses.asdict(record.summary),
    })


def write_json_atomic(path, obj):
    """Write obj as JSON to path whole or not at all (hlb.files.write_atomic)."""
    text = json.dumps(obj, indent=1) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))

"""What the user sees and keeps: the live table, the summary, and the JSON record."""

import dataclasses
import json
import math
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from hlb import __version__
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
    """What a runner tells about its progress (hlb.runs.run_rounds); each method does
    nothing here, so a listener overrides only what it shows."""

    def warmup_started(self):
        pass

    def warmup_finished(self, seconds):
        pass

    def run_started(self, run, runs):
        pass

    def step(self, run, epoch, step, total):
        pass

    def epoch(self, row):
        pass

    def run_finished(self, result):
        pass


class Table(Listener):
    """Prints one row per epoch and a TTA row per run.

    On a terminal, a status line (run, step, steps per second) is redrawn in place while an
    epoch trains and replaced by the epoch's row; when output goes to a file or pipe only the
    rows are written, one plain line each, never reprinting what came before.
    """

    def __init__(self, stream=None, live=None, min_interval=0.2, label=None):
        self.stream = stream or sys.stdout
        self.prefix = f"{label} " if label else ""     # tells interleaved arms apart
        self.live = self.stream.isatty() if live is None else live
        self.min_interval = min_interval
        self._status_shown = False
        self._last_draw = 0.0
        self._first_row_of_run = True

    def _write(self, text):
        self._clear_status()
        self.stream.write(self.prefix + text + "\n")
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

    def warmup_started(self):
        self._write("warm-up run (untimed: cudnn autotuning, compilation) ...")

    def warmup_finished(self, seconds):
        self._write(f"warm-up done in {seconds:.1f} s")

    def run_started(self, run, runs):
        if run == 0:
            self.header()
        self._first_row_of_run = True

    def step(self, run, epoch, step, total):
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and step < total:
            return
        self._last_draw = now
        self.stream.write(f"\r\033[K{self.prefix}  run {run} epoch {epoch + 1}: "
                          f"step {step}/{total}")
        self.stream.flush()
        self._status_shown = True

    def epoch(self, row):
        values = dataclasses.asdict(row)
        if not self._first_row_of_run:
            values["run"] = None      # the run number is shown once per run
        self._first_row_of_run = False
        self._write(format_row(values))

    def run_finished(self, result):
        if result.diverged:
            # The limit is hlb.train.DIVERGED_LOSS; the command line's last line names it.
            self._write(f"| run {result.run} diverged (loss NaN, infinite or too large) after "
                        f"{result.train_time_s:.2f} s; it is left out of the averages")
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
        lines.append(f"  time (s)      mean {s.time_mean:.3f}  std {s.time_std:.3f}  "
                     f"min {s.time_min:.3f}  max {s.time_max:.3f}")
        lines.append(f"  plain evaluation per epoch (untimed): {s.eval_time_per_epoch:.3f} s")
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


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        commit = out.stdout.strip()
        # Outside a checkout git may echo "HEAD" back; keep only a real commit id.
        return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
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
        "stopped": record.stopped,
        "warmup_s": record.warmup_s,
        "wall_s": record.wall_s,
        "epochs": epochs,
        "runs": results,
        "summary": dataclasses.asdict(record.summary),
    })


def write_json_atomic(path, obj):
    """Write obj as JSON to path whole or not at all (hlb.files.write_atomic)."""
    text = json.dumps(obj, indent=1) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))

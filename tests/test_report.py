import io
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hlb.bench.overrides import override
from hlb.bench.report import (Listener, Progress, Table, Watched, clock, duration, record_dict,
                              summary_lines, write_json_atomic)
from hlb.bench.runs import Record
from hlb.bench.stats import summarize
from hlb.bench.work import Work, forward_flops, run_work
from hlb.model import Net
from hlb.recipes import RECIPES
from hlb.train import EpochRow, RunResult


def _result(run, acc, time_s=2.0, diverged=False):
    rows = [EpochRow(run, e, 1.0 / e, 0.5, 1.1, 0.6, time_s * e / 2) for e in (1, 2)]
    return RunResult(run=run, seed=run, tta_acc=acc, val_acc=0.6, train_time_s=time_s,
                     eval_time_s=0.2, epochs=[] if diverged else rows, diverged=diverged)


def _drive(table, results):
    for r in results:
        table.run_started(r.run, len(results))
        for step in range(1, 4):
            table.step(r.run, 0, step, 3)
        for row in r.epochs:
            table.epoch(row)
        table.run_finished(r)


def test_plain_output_has_one_line_per_row_and_no_control_characters():
    out = io.StringIO()
    _drive(Table(stream=out, live=False), [_result(0, 0.94), _result(1, 0.93)])
    text = out.getvalue()
    assert "\r" not in text and "\033" not in text
    lines = text.splitlines()
    assert sum(1 for line in lines if line.startswith("|") and " tta |" in line) == 2
    assert sum(1 for line in lines if "run | epoch" in line) == 1     # header printed once


def test_live_output_redraws_a_status_line_in_place():
    out = io.StringIO()
    _drive(Table(stream=out, live=True, min_interval=0.0), [_result(0, 0.94)])
    text = out.getvalue()
    assert "\r\033[K  run 0 epoch 1: step 3/3" in text
    # The status line is cleared before the next row, so no row is printed twice.
    assert text.count("0.9400") == 1


def test_diverged_run_is_reported_and_left_out_of_the_summary():
    results = [_result(0, 0.94), _result(1, math.nan, diverged=True), _result(2, 0.92)]
    out = io.StringIO()
    _drive(Table(stream=out, live=False), results)
    assert "run 1 diverged in epoch 1 (loss NaN" in out.getvalue()
    s = summarize(results)
    assert s.n == 2 and s.diverged == 1 and s.acc_mean == pytest.approx(0.93)


def test_summary_and_record(tmp_path):
    results = [_result(0, 0.94, 2.0), _result(1, 0.92, 3.0)]
    record = Record(recipe=RECIPES["smoke"], device="cpu", data_fingerprint="abc", seed=0,
                    results=results, summary=summarize(results), wall_s=9.0)
    text = "\n".join(summary_lines(record))
    assert "mean 0.9300" in text and "95% CI" in text and "mean 2.500" in text
    assert "wall clock of the whole invocation: 9.0 s" in text
    path = tmp_path / "r.json"
    write_json_atomic(path, record_dict(record, ["--runs", "2"]))
    data = json.loads(path.read_text())
    assert data["recipe"]["name"] == "smoke" and data["data_fingerprint"] == "abc"
    assert len(data["runs"]) == 2 and len(data["epochs"]) == 4
    assert data["summary"]["acc_mean"] == pytest.approx(0.93)
    assert data["environment"]["torch"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]   # no temp file left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _steps(table, clock, run, steps, total, seconds_each):
    """Steps of `run`, each `seconds_each` long, its callback at the step's end."""
    for step in steps:
        clock.now += seconds_each
        table.step(run, 0, step, total)


def _estimates(out):
    return [line for line in out.getvalue().splitlines() if line.startswith("estimate")]


def test_a_long_invocation_says_how_long_after_its_first_step():
    # Recipe 94 on 2 CPU cores: 16 s a step, so the first word comes 16 s into the run.
    clock, out = FakeClock(), io.StringIO()
    table = Table(stream=out, live=False, progress=Progress("--recipe smoke", clock=clock))
    table.planned(1, 200)
    table.run_started(0, 1)
    _steps(table, clock, 0, [1], 200, 16.0)
    assert _estimates(out) == [
        "estimate: about 53 min more on this device (199 steps left at 0.0625 steps/s, "
        "measured over 1 step(s)); for a quick check use --recipe smoke"]
    _steps(table, clock, 0, range(2, 150), 200, 16.0)    # as said: nothing more to say
    assert len(_estimates(out)) == 1


def test_a_short_invocation_prints_no_estimate():
    clock, out = FakeClock(), io.StringIO()
    table = Table(stream=out, live=False, progress=Progress("--recipe smoke", clock=clock))
    table.planned(3, 100)
    table.run_started(0, 3)
    _steps(table, clock, 0, range(1, 101), 100, 1.0)   # 300 steps at 1 per second: 5 min
    assert _estimates(out) == []


def _work(recipe):
    """A fake work: the baseline's steps are 100 times the entry's, its TTA half its training."""
    per_step = {"entry": 1e9, "base": 1e11}[recipe]
    return Work(train=per_step * 10, tta=per_step * 5, plain=0.0, steps=10)


def test_the_estimate_follows_each_arms_own_speed():
    # verify: a fast entry and a baseline of 100 times its work a step, interleaved.
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("fewer --runs", clock=clock, work=_work)
    entry, base = [Table(stream=out, live=False, label=label, progress=progress, recipe=recipe)
                   for label, recipe in (("entry", "entry"), ("base ", "base"))]
    for table in (entry, base):
        table.planned(2, 10)
    entry.run_started(0, 2)
    _steps(entry, clock, 0, range(1, 11), 10, 0.5)
    # Measured after 2 s on the entry (0.5 s a step, 1 s per 2e9 FLOPs), the baseline is
    # predicted at 50 s a step, its TTA adding half: 16 x 0.75 s + 20 x 75 s.
    assert _estimates(out) == [
        "estimate: about 25 min more on this device (entry: 16 steps left at 1.33 steps/s, "
        "measured over 4 step(s); base: 20 steps left at 0.0133 steps/s, predicted from its "
        "work); for a quick check use fewer --runs"]
    entry.run_finished(_result(0, 0.9))
    base.run_started(0, 2)
    _steps(base, clock, 0, range(1, 4), 10, 200.0)      # 4 times slower than predicted
    lines = _estimates(out)          # said again at its first step, and then no more
    assert len(lines) == 2 and lines[1].startswith("estimate: about 1.6 h more")
    assert "base: 19 steps left at 0.00333 steps/s, measured over 1 step(s)" in lines[1]


def test_the_status_line_shows_speed_and_time_left_for_the_run_and_the_invocation():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(clock=clock)
    tables = [Table(stream=out, live=True, min_interval=0.0, label=name, progress=progress)
              for name in "AB"]
    for table in tables:              # both arms of a compare share one Progress
        table.planned(2, 100)
    tables[0].run_started(0, 2)
    _steps(tables[0], clock, 0, range(1, 5), 100, 5.0)
    status = out.getvalue().split("\r\033[K")[-1]
    # 5 s a step, arm B predicted alike (no work given): 96 steps left in the run, 396 in all.
    assert status == "A   run 0 epoch 1: step 4/100, 0.2 steps/s, run 8:00 left, all 33:00 left"
    assert "estimate: about 33 min" in out.getvalue()


def test_a_run_that_stops_early_takes_its_steps_off_the_time_left():
    clock = FakeClock()
    progress = Progress(clock=clock)
    table = Table(stream=io.StringIO(), live=False, progress=progress)
    table.planned(2, 100)
    _steps(table, clock, 0, range(1, 11), 100, 1.0)
    table.run_finished(_result(0, math.nan, diverged=True))   # stopped at step 10 of 100
    assert progress.planned == 110
    table.run_finished(_result(1, 0.9))      # another process's run: nothing of ours
    assert progress.planned == 110


def test_a_sweeps_lines_get_the_estimate_too():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(clock=clock)
    seen = []

    class Lines(Listener):
        def run_finished(self, result):
            seen.append(result.run)

    cells = [Watched(Lines(), progress.arm(name), out) for name in ("base", "cell")]
    for cell in cells:
        cell.planned(5, 100)
    cells[0].run_started(0, 5)
    _steps(cells[0], clock, 0, range(1, 4), 100, 3.0)
    cells[0].run_finished(_result(0, 0.9))
    assert seen == [0]
    assert _estimates(out)[0].startswith("estimate: about 50 min more on this device (base: ")


def test_the_work_of_a_run_counts_what_flop_counter_mode_counts():
    recipe = override(RECIPES["smoke"], ["widths=8,16,16"])
    net = Net(recipe)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 3, 32, 32))
    assert forward_flops(net, 32) == counter.get_total_flops()
    work = run_work(recipe)
    assert work.steps == recipe.total_steps()
    assert work.per_step == 3 * recipe.batch_size * counter.get_total_flops()


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (45, 700, 3000, 11520)] == ["45 s", "12 min", "50 min",
                                                             "3.2 h"]
    assert [clock(s) for s in (5, 245, 3723)] == ["0:05", "4:05", "1:02:03"]


def test_the_table_header_comes_first_even_when_the_first_run_shown_is_not_run_0():
    # A resumed invocation that kept runs 0-2 starts its table at run 3.
    out = io.StringIO()
    table = Table(stream=out, live=False)
    table.run_started(3, 5)
    table.run_started(4, 5)
    lines = out.getvalue().splitlines()
    assert "train_loss" in lines[1] and sum("train_loss" in line for line in lines) == 1


def test_an_arm_whose_work_cannot_be_counted_leaves_the_run_alone():
    def broken(recipe):
        raise RuntimeError("no such layer")

    clock, out = FakeClock(), io.StringIO()
    progress = Progress(clock=clock, work=broken)
    table = Table(stream=out, live=False, progress=progress, recipe=RECIPES["smoke"])
    table.planned(1, 200)
    table.run_started(0, 1)
    _steps(table, clock, 0, [1, 2], 200, 16.0)      # steps weigh alike instead
    assert progress.no_work and _estimates(out)[0].startswith("estimate: about 53 min")

import io
import json
import math

import pytest

from hlb.bench.report import (Progress, Table, clock, duration, record_dict, summary_lines,
                              write_json_atomic)
from hlb.bench.runs import Record
from hlb.bench.stats import summarize
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
    for step in steps:
        table.step(run, 0, step, total)
        clock.now += seconds_each


def test_a_long_invocation_says_how_long_once_the_first_steps_are_measured():
    clock, out = FakeClock(), io.StringIO()
    table = Table(stream=out, live=False, progress=Progress("--recipe smoke", clock=clock))
    table.planned(2, 100)
    table.run_started(0, 2)
    _steps(table, clock, 0, range(1, 4), 100, 5.0)
    assert "estimate" not in out.getvalue()           # 2 steps after the first: too few
    _steps(table, clock, 0, range(4, 60), 100, 5.0)
    lines = [line for line in out.getvalue().splitlines() if "estimate" in line]
    # 3 steps in 15 s after the first: 0.2 steps/s, and 196 steps left.
    assert lines == ["estimate: about 16 min more on this device (196 steps left at 0.2 "
                     "steps/s, the speed of the first 4 steps); for a quick check use "
                     "--recipe smoke"]


def test_a_short_invocation_prints_no_estimate():
    clock, out = FakeClock(), io.StringIO()
    table = Table(stream=out, live=False, progress=Progress("--recipe smoke", clock=clock))
    table.planned(3, 100)
    _steps(table, clock, 0, range(1, 101), 100, 1.0)   # 300 steps at 1 per second: 5 min
    assert "estimate" not in out.getvalue()


def test_the_status_line_shows_speed_and_time_left_for_the_run_and_the_invocation():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(clock=clock)
    tables = [Table(stream=out, live=True, min_interval=0.0, label=name, progress=progress)
              for name in "AB"]
    for table in tables:              # both arms of a compare share one Progress
        table.planned(2, 100)
    _steps(tables[0], clock, 0, range(1, 5), 100, 5.0)
    status = out.getvalue().split("\r\033[K")[-1]
    # 3 steps in 15 s after the first; 96 steps left in the run, 396 in the invocation.
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

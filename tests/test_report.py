import io
import json
import math

import pytest

from hlb.recipes import RECIPES
from hlb.report import Table, record_dict, summary_lines, write_json_atomic
from hlb.runs import Record
from hlb.stats import summarize
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
    assert "run 1 diverged" in out.getvalue()
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

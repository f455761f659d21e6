import json
import math
import os

import pytest

from hlb.bench import records
from hlb.bench.cli import main
from hlb.bench.records import (default_runs_dir, list_records, number, overrides_of, read_record,
                               records_table, save_record)
from hlb.errors import HlbError


def make_record(name="smoke", accs=(0.50, 0.56), times=(20.0, 22.0), argv=None,
                date="2025-01-02T03:04:05+0000", epochs=3, diverged=(), overrides=None):
    """A small record in the format of hlb.bench.report.record_dict; run i has accuracy accs[i]."""
    runs, rows = [], []
    for i, (acc, t) in enumerate(zip(accs, times)):
        bad = i in diverged
        for e in range(1, epochs + 1):
            rows.append({"run": i, "epoch": e, "train_loss": 2.0 / e + 1 - acc,
                         "train_acc": acc * e / epochs, "val_loss": 1.8 / e + 1.2 - acc,
                         "val_acc": acc * (0.6 + 0.4 * e / epochs) - 0.02,
                         "time_s": t * e / epochs - 0.5, "tta_acc": None})
        runs.append({"run": i, "seed": i, "tta_acc": None if bad else acc, "val_acc": acc,
                     "train_time_s": t, "eval_time_s": 0.5, "diverged": bad,
                     "time_to_target": None, "peak_mem_allocated": 0,
                     "peak_mem_reserved": 0})
    done = [r for r in runs if not r["diverged"]]
    n = len(done)
    acc_mean = sum(r["tta_acc"] for r in done) / n if n else None
    time_mean = sum(r["train_time_s"] for r in done) / n if n else None
    record = {
        "format": "hlb-cifar10 record v1",
        "argv": argv if argv is not None else ["--recipe", name, "--device", "cpu"],
        "recipe": {"name": name, "epochs": float(epochs), "lr": 8.0},
        "device": "cpu",
        "environment": {"date": date, "gpu": None, "torch": "2.13.0+cpu",
                        "git_commit": None, "hostname": "h", "python": "3.11"},
        "data_fingerprint": "abc", "seed": 0, "stopped": None, "warmup_s": 0.0,
        "wall_s": 60.0, "epochs": rows, "runs": runs,
        "summary": {"n": n, "diverged": len(runs) - n, "acc_mean": acc_mean,
                    "acc_std": None, "time_mean": time_mean},
    }
    if overrides is not None:       # records written before "overrides" have only argv
        record["overrides"] = overrides
    return record


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_default_runs_dir_follows_the_environment(monkeypatch):
    monkeypatch.delenv("HLB_RUNS_DIR", raising=False)
    assert str(default_runs_dir()) == "runs"
    monkeypatch.setenv("HLB_RUNS_DIR", "/tmp/elsewhere")
    assert str(default_runs_dir()) == "/tmp/elsewhere"


def test_save_writes_a_named_folder_with_the_record(tmp_path):
    record = make_record()
    path = save_record(record, tmp_path / "runs")       # the folder is created
    folder = path.parent.name
    stamp, name, digest = folder.rsplit("-", 2)
    assert path.name == "record.json" and name == "smoke"
    assert len(stamp) == len("20250102-030405") and stamp[8] == "-"
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert json.loads(path.read_text()) == record
    assert _files(tmp_path) == [f"runs/{folder}/record.json"]       # no temporary files


def test_two_saves_in_the_same_second_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(records.time, "strftime", lambda fmt: "20250102-030405")
    a = save_record(make_record(accs=(0.5, 0.6)), tmp_path)
    b = save_record(make_record(accs=(0.5, 0.7)), tmp_path)
    assert a != b and a.parent.name.startswith("20250102-030405-smoke-")
    assert json.loads(a.read_text())["runs"][1]["tta_acc"] == 0.6
    assert json.loads(b.read_text())["runs"][1]["tta_acc"] == 0.7
    assert len(_files(tmp_path)) == 2


def test_an_odd_recipe_name_cannot_escape_the_runs_dir(tmp_path):
    path = save_record(make_record(name="../x y"), tmp_path / "runs")
    assert path.parent.parent == tmp_path / "runs"
    assert "/" not in path.parent.name and " " not in path.parent.name


def test_save_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(path, write):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(records, "write_atomic", full)
    with pytest.raises(HlbError, match="could not save the record .*No space left") as e:
        save_record(make_record(), tmp_path / "runs")
    assert "\n" not in str(e.value)
    assert _files(tmp_path) == [] and list((tmp_path / "runs").iterdir()) == []


def test_save_into_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(HlbError, match="could not save the record"):
        save_record(make_record(), tmp_path / "runs")


def test_list_gives_newest_first_with_counts_means_and_overrides(tmp_path):
    old = make_record(accs=(0.50, 0.60), times=(20.0, 24.0),
                      date="2025-01-01T10:00:00+0000")
    new = make_record(accs=(0.40, 0.50, 0.60), times=(10.0, 11.0, 12.0),
                      date="2025-01-02T10:00:00+0000", overrides=["lr=4", "epochs=3"],
                      argv=["--recipe", "smoke", "--set", "lr=9"])    # overrides win
    save_record(new, tmp_path)      # saved first, but dated later: order is by the record
    save_record(old, tmp_path)
    rows = list_records(tmp_path)
    assert [r["n"] for r in rows] == [3, 2]
    assert rows[0]["date"] == "2025-01-02 10:00:00"
    assert rows[0]["acc_mean"] == pytest.approx(0.50)
    assert rows[0]["time_mean"] == pytest.approx(11.0)
    assert rows[0]["overrides"] == ["lr=4", "epochs=3"]
    assert rows[1]["acc_mean"] == pytest.approx(0.55)
    assert rows[1]["overrides"] == []
    assert all(r["recipe"] == "smoke" and r["device"] == "cpu" and r["error"] is None
               for r in rows)
    table = records_table(rows, tmp_path)
    assert table[0].split()[:5] == ["date", "recipe", "n", "acc", "%"]
    assert "lr=4 epochs=3" in table[2] and "50.00" in table[2] and "11.000" in table[2]
    assert "55.00" in table[3] and str(rows[1]["path"]) in table[3]
    # Fixed width: every column starts at the same place on every line.
    assert len({line.index("smoke") for line in table[2:]}) == 1


def test_diverged_runs_and_a_missing_mean_are_shown(tmp_path):
    save_record(make_record(accs=(0.5, 0.6), diverged=(0, 1)), tmp_path)
    rows = list_records(tmp_path)
    assert rows[0]["n"] == 0 and rows[0]["diverged"] == 2 and math.isnan(rows[0]["acc_mean"])
    line = records_table(rows)[2]
    assert "0+2d" in line and "nan" not in line


def test_corrupt_and_foreign_files_are_flagged_not_fatal(tmp_path):
    save_record(make_record(), tmp_path)
    for name, text in [("a-broken", '{"runs": [1'), ("b-list", "[1, 2]"),
                       ("c-binary", "\udcff")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(text, errors="surrogateescape")
    (tmp_path / "notes.txt").write_text("not a record folder")
    rows = list_records(tmp_path)
    assert len(rows) == 4 and rows[0]["error"] is None       # good rows come first
    bad = rows[1:]
    assert [r["path"].parent.name for r in bad] == ["a-broken", "b-list", "c-binary"]
    assert "is not JSON" in bad[0]["error"] and "not an hlb record" in bad[1]["error"]
    assert all("\n" not in r["error"] and str(r["path"]) in r["error"] for r in bad)
    table = records_table(rows)
    assert sum("(unreadable)" in line for line in table) == 3


def test_missing_or_empty_dir_lists_nothing(tmp_path):
    assert list_records(tmp_path / "missing") == []
    assert list_records(tmp_path) == []
    assert records_table([], tmp_path / "missing") == [f"no records in {tmp_path / 'missing'}"]


def test_read_record_errors_are_one_line(tmp_path):
    with pytest.raises(HlbError, match="no record at"):
        read_record(tmp_path / "nope.json")
    with pytest.raises(HlbError, match="is a folder"):
        read_record(tmp_path)
    (tmp_path / "x.json").write_text('{"runs": [{"run": 0}], "epochs": [3]}')
    with pytest.raises(HlbError, match="not an hlb record"):
        read_record(tmp_path / "x.json")


def test_overrides_are_read_as_kept_or_from_an_old_records_argv():
    assert overrides_of({}) == [] and overrides_of({"argv": None}) == []
    assert overrides_of({"overrides": ["lr=4", "widths=8,16,16"], "argv": []}) \
        == ["lr=4", "widths=8,16,16"]
    old = {"argv": ["--set", "lr=4", "--runs", "3", "--set=widths=8,16,16", "--set"]}
    assert overrides_of(old) == ["lr=4", "widths=8,16,16"]


def test_numbers_read_from_a_record():
    assert number(3) == 3.0 and number(0.5) == 0.5
    assert all(math.isnan(number(v)) for v in (None, "1", True, [1]))


def test_command_prints_the_table(tmp_path, capsys):
    save_record(make_record(), tmp_path)
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("date") and len(out) == 3
    assert main(["runs", "--dir", str(tmp_path / "none")]) == 0
    assert "no records in" in capsys.readouterr().out


def test_no_temporary_files_after_many_saves(tmp_path):
    for i in range(5):
        save_record(make_record(accs=(0.5, 0.5 + i / 100)), tmp_path)
    names = _files(tmp_path)
    assert len(names) == 5 and all(n.endswith("/record.json") for n in names)
    assert not any(n.startswith(".") for p in names for n in p.split("/"))
    assert all(os.path.getsize(tmp_path / n) > 0 for n in names)


def consistent(record):
    """`record` with the summary its runs give, and how many runs were asked."""
    import dataclasses

    from hlb.bench.report import jsonable
    from hlb.bench.stats import summarize
    record["summary"] = jsonable(dataclasses.asdict(summarize(records.runs_of(record, "x"))))
    record["runs_asked"] = len(record["runs"])
    return record


def test_a_record_whose_numbers_add_up_passes_the_integrity_check():
    record = consistent(make_record(accs=(0.5, 0.56, 0.53), times=(20.0, 22.0, 21.0)))
    results = records.check_integrity(record, "r.json")
    assert [r.tta_acc for r in results] == [0.5, 0.56, 0.53]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["runs"][1].update(tta_acc=0.99), "its summary does not add up: acc_mean"),
    (lambda r: r["summary"].update(acc_mean=0.99), "its summary does not add up: acc_mean 0.99"),
    (lambda r: r["summary"].update(n=5), "its summary does not add up: n 5 in it, 3 from"),
    (lambda r: r["runs"][2].update(train_time_s=1.0), "does not add up: time_mean"),
    (lambda r: r.update(runs=r["runs"][:2], epochs=[e for e in r["epochs"] if e["run"] < 2]),
     "2 run(s) where 3 were asked, and it does not say it stopped"),
    (lambda r: r.pop("summary"), "it has no summary"),
    (lambda r: r["runs"][0].pop("seed"), "run 0 lacks seed"),
])
def test_an_edited_record_is_refused_in_one_line_naming_what(edit, message):
    record = consistent(make_record(accs=(0.5, 0.56, 0.53), times=(20.0, 22.0, 21.0)))
    edit(record)
    with pytest.raises(HlbError) as e:
        records.check_integrity(record, "r.json")
    assert message in str(e.value) and str(e.value).startswith("r.json: ")
    assert "\n" not in str(e.value)


def test_a_record_that_says_it_stopped_may_hold_fewer_runs():
    record = consistent(make_record(accs=(0.5, 0.56)))
    record["runs_asked"], record["stopped"] = 5, "interrupted"
    assert len(records.check_integrity(record, "r.json")) == 2


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "is not a record (RecursionError"),
    ('{"runs": [], "acc": NaN}', "is not a record (ValueError: NaN is not JSON"),
    ('{"n": ' + "9" * 5000 + "}", "is not a record (ValueError"),
    (b"\xff\xfe{}", "is not JSON"),
])
def test_hostile_json_is_one_line(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(HlbError) as e:
        records.load_json(path)
    assert message in str(e.value) and "\n" not in str(e.value)

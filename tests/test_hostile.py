"""Every reader of the runs folder survives any file in it: `runs`, `board` and `plot` list a
record whose shown fields hold a value of another type apart, with its one-line reason, and go
on (exit 0); text of the right type with control characters, dollar signs or no end is shown on
one line. A deterministic fuzz: each shown field of a small good record set to values of other
types and to hostile text, one at a time.
"""

import copy
import dataclasses
import json
import re

import pytest

from hlb.bench import plot
from hlb.bench.cli import main
from hlb.bench.records import runs_of
from hlb.bench.report import jsonable
from hlb.bench.stats import summarize
from hlb.bench.verify import FORMAT, claimed, judge, target_of
from test_records import make_record


def _nested(depth):
    value = ["deep"]
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [True, False, None, 0, -3, 10**400, 1e308, [], [1, "two"], {}, {"a": {"b": [None]}},
           _nested(40), "", "two\nlines\r\x00\x1b[31m\u2028end", "$\\frac{$}", "x" * 100_000]
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _fits(value, kind):
    """Whether the readers should take `value` for a field of `kind` (else: listed apart)."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    number = whole or isinstance(value, float)
    return {"text": value is None or isinstance(value, str), "str": isinstance(value, str),
            "count": value is None or whole and value >= 0,
            "number": value is None or number,
            "texts": isinstance(value, list) and all(isinstance(v, str) for v in value),
            "part": isinstance(value, dict),
            "rows": isinstance(value, list) and all(isinstance(v, dict) for v in value),
            "run": whole and value >= 0,
            "first run": whole and value == 0,      # another breaks seed = seed + run
            "format": value is None,        # a record of no format is an old one: listed
            "any": True, "never": False}[kind]


def _name(where):
    return ".".join(map(str, where))


def _set(record, where, value):
    record = copy.deepcopy(record)
    part = record
    for key in where[:-1]:
        part = part[key]
    part[where[-1]] = value
    return record


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _one_line_each(text):
    assert not CONTROL.search(text.replace("\n", "")), "a control character was printed"
    return text.splitlines()


# `hlb runs`: the table.

GOOD = make_record(overrides=["label_smoothing=0.1"])
RUNS_FIELDS = {("environment", "date"): "text", ("recipe", "name"): "text",
               ("device",): "text", ("environment", "gpu"): "text",
               ("summary", "n"): "count", ("summary", "diverged"): "count",
               ("summary", "acc_mean"): "number", ("summary", "time_mean"): "number",
               ("overrides",): "texts", ("overrides", 0): "str", ("format",): "format",
               ("recipe",): "part", ("environment",): "part", ("summary",): "part",
               ("runs",): "rows"}


@pytest.mark.parametrize("where", RUNS_FIELDS, ids=_name)
def test_runs_lists_a_hostile_record_apart_and_goes_on(where, tmp_path, capsys):
    good = _write(tmp_path / "good" / "record.json", GOOD)
    bad = [_write(tmp_path / f"bad{i}" / "record.json", _set(GOOD, where, value))
           for i, value in enumerate(HOSTILE)]
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    lines = _one_line_each(capsys.readouterr().out)
    assert len(lines) == 3 + len(HOSTILE) and all(len(line) < 2000 for line in lines)
    rows = {p: [line for line in lines if str(p) in line] for p in [good, *bad]}
    assert all(len(found) == 1 for found in rows.values()), rows
    assert "(unreadable)" not in rows[good][0] and " smoke " in rows[good][0]
    for path, value in zip(bad, HOSTILE):
        apart = "(unreadable)" in rows[path][0]
        assert apart != _fits(value, RUNS_FIELDS[where]), (value, rows[path])
        assert not apart or re.search(r"edited\?|another kind|not an hlb record", rows[path][0])


def test_runs_shows_a_folder_named_with_a_newline_on_one_line(tmp_path, capsys):
    _write(tmp_path / "evil\nname" / "record.json", GOOD)
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    lines = _one_line_each(capsys.readouterr().out)
    assert len(lines) == 3 and "evil\\nname" in lines[2] and "(unreadable)" not in lines[2]


def test_a_record_of_another_kind_is_listed_apart_by_every_reader(tmp_path, capsys):
    later = _write(tmp_path / "t" / "record.json", {"format": "hlb-cifar10 forecast v1",
                                                      "trials": [{"value": 1.0}]})
    _write(tmp_path / "g" / "record.json", GOOD)
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{later}: a record of another kind (hlb-cifar10 forecast v1)" in out
    assert main(["board", str(tmp_path)]) == 0
    assert "a record of another kind (hlb-cifar10 forecast v1)" in capsys.readouterr().out


# `hlb board`: verification records, made from two small records with verify's own judge.

def _claim_part(overrides):
    record = make_record(accs=(0.90, 0.91, 0.92), times=(1.0, 1.0, 1.0), overrides=overrides)
    record["recipe"]["target"] = 0.5
    record["summary"] = jsonable(dataclasses.asdict(summarize(runs_of(record, "x"))))
    return record


@pytest.fixture(scope="module")
def verification():
    """A verified entry, as verify writes it (its rerun gave the claim's numbers again)."""
    entry, base = _claim_part(["label_smoothing=0.1"]), _claim_part([])
    runs = [runs_of(entry, "entry"), runs_of(base, "base")]
    claim = claimed("claim.json", "0" * 64, [(entry, runs[0]), (base, runs[1])])
    result = judge(claim, target_of(entry), *runs, "cpu")
    assert result["verdict"] == "verified"
    return jsonable({"format": FORMAT, "argv": [], "environment": entry["environment"],
                     "claim": claim, "entry": entry, "baseline": base, "result": result})


# A verification's result must follow from its claim and runs: an edited verdict never fits.
BOARD_FIELDS = {("claim", "recipe"): "text", ("claim", "overrides"): "texts",
                ("claim", "code"): "any", ("entry", "environment", "gpu"): "text",
                ("entry", "environment", "date"): "text", ("format",): "never",
                ("entry", "recipe", "name"): "str", ("baseline", "recipe", "name"): "str",
                ("result", "verdict"): "never", ("claim",): "never"}


@pytest.mark.parametrize("where", BOARD_FIELDS, ids=_name)
def test_board_lists_a_hostile_verification_apart_and_goes_on(where, verification, tmp_path,
                                                              capsys):
    _write(tmp_path / "good.json", verification)
    bad = [_write(tmp_path / f"bad{i}.json", _set(verification, where, value))
           for i, value in enumerate(HOSTILE)]
    assert main(["board", str(tmp_path)]) == 0
    lines = _one_line_each(capsys.readouterr().out)
    assert all(line.startswith("| ") or line in ("", "Not ranked:") for line in lines), lines
    ranked = [line for line in lines if re.match(r"\| \d+ \|", line)]
    fits = [_fits(value, BOARD_FIELDS[where]) for value in HOSTILE]
    assert len(ranked) == 1 + sum(fits)
    for path, value, fit in zip(bad, HOSTILE, fits):
        apart = [line for line in lines if line.startswith(f"| {path} |")]
        assert len(apart) == (not fit) and all(len(line) < 1000 for line in apart), value


# `hlb plot`: the records it draws.

PLOT_FIELDS = {("recipe", "name"): "text", ("device",): "text",
               ("environment", "gpu"): "text", ("environment", "torch"): "text",
               ("overrides",): "texts", ("overrides", 0): "str", ("epochs", 0, "run"): "run",
               ("runs", 0, "run"): "first run", ("runs", 0, "tta_acc"): "any",
               ("epochs", 0, "val_acc"): "any", ("recipe",): "part", ("runs",): "rows"}


@pytest.mark.parametrize("where", PLOT_FIELDS, ids=_name)
def test_plot_reads_a_hostile_record_apart(where, tmp_path):
    good = _write(tmp_path / "good.json", GOOD)
    for i, value in enumerate(HOSTILE):
        bad = _write(tmp_path / f"bad{i}.json", _set(GOOD, where, value))
        apart = []
        found = plot._readable([good, bad], apart)
        assert [i for i, _ in found] == ([0, 1] if _fits(value, PLOT_FIELDS[where]) else [0])
        assert all(path == bad and "\n" not in why for path, why in apart), (where, value)
        for _, record in found:     # what the panels read of it is text on one line
            arm = plot._Arm(record, bad)
            assert not CONTROL.search(arm.base_label() + plot._title([arm]))


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")    # 1e308 seconds
def test_plot_draws_hostile_text_and_numbers_and_leaves_a_bad_record_out(tmp_path, capsys):
    odd = _set(GOOD, ("recipe", "name"), "$\\frac{$} two\nlines")
    odd["device"], odd["environment"]["torch"] = "cu\x00da" * 50, "$x^$"
    odd["environment"]["gpu"], odd["overrides"] = "x" * 100_000, ["a=$b", "c=d\ne"]
    odd["runs"][0].update(tta_acc=10**400, train_time_s=1e308)
    odd["epochs"][0].update(epoch=10**400, val_acc=-1e308, time_s=1e308)
    files = [_write(tmp_path / f"{name}.json", data) for name, data in
             (("good", GOOD), ("bad", _set(GOOD, ("device",), True)), ("odd", odd))]
    out = tmp_path / "plot.png"
    assert main(["plot", *map(str, files), "-o", str(out)]) == 0
    lines = _one_line_each(capsys.readouterr().out)
    assert lines == [f"left out {files[1]}: its device is a bool, not text (edited?); give a "
                     f"file written by main.py --json", f"plot written to {out}"]
    assert out.stat().st_size > 10_000


def test_a_hostile_sweep_record_plots_or_is_one_line(tmp_path, capsys):
    sweep = copy.deepcopy(GOOD)
    sweep.update(format="hlb-cifar10 sweep v1", runs_asked=2, correction="$\n",
                 vary=[{"key": "$a", "values": ["1", "$2"]}, {"key": "b\n", "values": ["x"]}],
                 cells=[{"name": "$c\n", "runs": [{"tta_acc": 0.5, "train_time_s": 3}]}, 7],
                 table=[{"values": {"$a": "$2", "b\n": "x"}, "acc_mean": 0.5},
                        {"values": "no"}, {"values": {"$a": 1, "b\n": "x"}}])
    path, out = _write(tmp_path / "sweep.json", sweep), tmp_path / "sweep.png"
    assert main(["plot", str(path), "-o", str(out)]) == 0
    assert _one_line_each(capsys.readouterr().out) == [f"plot written to {out}"]
    sweep["vary"][0]["values"] = [1, 2]             # not as sweep writes them: no heat map
    _write(path, sweep)
    assert main(["plot", str(path), "-o", str(out)]) == 0

"""The experiment workflow from the command line: compare two arms, time to target."""

import json

import pytest

import hlb.bench.runs
from conftest import synthetic_cifar
from hlb.bench.cli import main
from hlb.recipes import get_recipe

TINY = ["--set", "train_images=256", "--set", "test_images=128", "--set", "batch_size=64",
        "--set", "epochs=2", "--set", "whiten_init_images=128", "--set", "widths=8,16,16"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    data = synthetic_cifar(256, 128)
    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)


def test_compare_runs_both_arms_interleaved_with_the_same_seeds(tmp_path, runs_dir, capsys):
    out = tmp_path / "cmp.json"
    flags = " ".join(TINY)
    status = main(["compare", "--recipe", "smoke", "--device", "cpu", "--runs", "3",
                   "--seed", "7", "--a", flags, "--b", flags + " --set bias_lr=0.03",
                   "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    # Interleaved: A's run 0, then B's run 0, then A's run 1 ...
    order = [line[:1] for line in text.splitlines() if line[2:].startswith("| ") and " tta |"
             in line]
    assert order == ["A", "B", "A", "B", "A", "B"]
    assert "paired over 3 seeds" in text
    verdicts = [line for line in text.splitlines() if line.startswith(
        ("no detectable difference:", "B is better than A:", "B is worse than A:"))]
    assert len(verdicts) == 1
    assert len(list(runs_dir.glob("*/record.json"))) == 2       # each arm's record is kept
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["a"]["runs"]] == [7, 8, 9]
    assert [r["seed"] for r in record["b"]["runs"]] == [7, 8, 9]
    assert record["a"]["recipe"]["bias_lr"] == get_recipe("smoke").bias_lr
    assert record["b"]["recipe"]["bias_lr"] == 0.03
    assert record["a"]["overrides"] == TINY[1::2]
    assert record["b"]["overrides"] == TINY[1::2] + ["bias_lr=0.03"]
    assert record["comparison"]["test"] == "paired"


def test_compare_two_saved_records(tmp_path, capsys):
    paths = []
    for name, lr in (("a", "0.065"), ("b", "0.03")):
        path = tmp_path / f"{name}.json"
        assert main(["--recipe", "smoke", "--device", "cpu", "--runs", "2", *TINY,
                     "--set", f"bias_lr={lr}", "--json", str(path)]) == 0
        paths.append(str(path))
    capsys.readouterr()
    assert main(["compare", *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("arm") and "paired over 2 seeds" in lines[-1]


@pytest.mark.parametrize("args, message", [
    (["compare", "--runs", "1"], "--runs must be at least 2"),
    (["compare", "--a", "--set bias_lr=x"], "arm A: --set bias_lr=x: expected a number"),
    (["compare", "--b", "--recipe 93"], "arm B: unknown recipe '93'"),
    (["compare", "only_one.json"], "two records"),
    (["compare", "missing_a.json", "missing_b.json"], "missing_a.json"),
])
def test_compare_usage_errors(args, message, capsys):
    assert main(args) in (1, 2)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_time_to_target_stops_at_the_first_epoch_that_reaches_it(tmp_path, capsys):
    out = tmp_path / "r.json"
    status = main(["--recipe", "smoke", "--device", "cpu", "--runs", "2", *TINY,
                   "--set", "epochs=4", "--target-acc", "0.3", "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    record = json.loads(out.read_text())
    reached = 0
    for run in record["runs"]:
        rows = [e for e in record["epochs"] if e["run"] == run["run"]]
        earlier = max([r["tta_acc"] for r in rows[:-1]] or [0])
        assert earlier < 0.3                       # it did not stop late
        if run["time_to_target"] is not None:      # it stopped at the epoch that got there
            reached += 1
            assert rows[-1]["tta_acc"] >= 0.3
            assert run["time_to_target"] == rows[-1]["time_s"] == run["train_time_s"]
        else:
            assert len(rows) == 4 and rows[-1]["tta_acc"] < 0.3
    assert reached >= 1
    assert record["summary"]["target_reached"] == reached and record["target_acc"] == 0.3
    assert f"reached in {reached} of 2 run(s)" in text


def test_an_unreached_target_is_reported(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--recipe", "smoke", "--device", "cpu", *TINY, "--target-acc", "1.0",
                 "--set", "epochs=1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["runs"][0]["time_to_target"] is None
    assert record["summary"]["target_reached"] == 0
    assert "reached in 0 of 1 run(s)" in capsys.readouterr().out


def test_target_must_be_a_fraction(capsys):
    assert main(["--target-acc", "94"]) == 2
    assert "--target-acc is a fraction" in capsys.readouterr().err


def test_records_are_kept_listed_and_plotted(runs_dir, tmp_path, capsys):
    assert main(["--recipe", "smoke", "--device", "cpu", *TINY, "--set", "bias_lr=0.05"]) == 0
    assert "record kept in " + str(runs_dir) in capsys.readouterr().out
    assert main(["--recipe", "smoke", "--device", "cpu", *TINY, "--no-save"]) == 0
    assert main(["runs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len([line for line in table if "bias_lr=0.05" in line]) == 1
    assert not any("no records" in line for line in table)
    pytest.importorskip("matplotlib")
    kept = sorted(runs_dir.glob("*/record.json"))
    assert len(kept) == 1
    out = tmp_path / "p.png"
    assert main(["plot", str(kept[0]), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_on_an_empty_folder(tmp_path, capsys):
    assert main(["runs", "--dir", str(tmp_path / "none")]) == 0
    assert "no records in" in capsys.readouterr().out

"""hlb tune (hlb.bench.tune, tune_report): the space and its refusals, the storage and its
faults, workers sharing a study (two processes on one SQLite file; one killed mid-trial and
the study resumed), the sampler's seed, failed trials, the ranked end, the confirmation, the
record and who reads it. Training is replaced by a planted accuracy (as tests/test_sweep.py
does), except for one real tiny trial on synthetic data at the end."""

import builtins
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

import hlb  # noqa: E402
import hlb.bench.runs  # noqa: E402
from conftest import synthetic_cifar  # noqa: E402
from hlb.bench import cli  # noqa: E402
from hlb.bench.tune import constraint, parse_space, prune_reason  # noqa: E402
from hlb.errors import UsageError  # noqa: E402
from hlb.recipes import get_recipe  # noqa: E402
from hlb.train import PreparedRun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_recipe("smoke")
TINY = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=256",
        "--set", "test_images=128", "--set", "batch_size=64", "--set", "whiten_init_images=128",
        "--set", "widths=8,16,16"]

# The planted run: accuracy peaks at label_smoothing 0.2, shared noise by seed, time grows
# with it, and a run diverges above 0.45. Written out so that worker processes plant it too.
PLANT = """
import math, os, time
import hlb.bench.runs
from conftest import synthetic_cifar
from hlb.train import PreparedRun, RunResult

def planted_run(self, seed, run=0, **kwargs):
    s = self.recipe.label_smoothing
    time.sleep(float(os.environ.get("PLANTED_SLEEP", "0")))
    acc = 0.5 - 4 * (s - 0.2) ** 2 + 0.01 * math.sin(7 * seed) + 0.002 * math.cos(50 * s * seed)
    return RunResult(run=run, seed=seed, tta_acc=acc, val_acc=acc, train_time_s=1 + s,
                     diverged=s > 0.45)
"""
# What a worker process runs first (in this process, the fixture patches with monkeypatch, so
# that nothing stays planted after the test).
PLANT_IN_WORKER = PLANT + """
PreparedRun.run = planted_run
hlb.bench.runs.load_data = lambda data_dir=None: synthetic_cifar()
"""


@pytest.fixture
def planted(monkeypatch):
    space = {}
    exec(PLANT, space)
    monkeypatch.setattr(PreparedRun, "run", space["planted_run"])
    monkeypatch.setattr(hlb.bench.runs, "load_data", lambda data_dir=None: synthetic_cifar())


def _storage(tmp_path, name="tune.db"):
    return f"sqlite:///{tmp_path / name}"


def _tune(*flags, storage):
    return cli.main(["tune", *TINY, "--storage", storage, *flags])


def _trials(storage, study="smoke-accuracy"):
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def _states(trials):
    return [t.state.name for t in trials]


# The space and its refusals, before any training


@pytest.mark.parametrize("item, said", [
    ("nope=1:2", "--space nope=1:2: unknown key 'nope'; valid keys:"),
    ("name=a,b", "--space name=a,b: name cannot vary (it names the recipe)"),
    ("label_smoothing=0.3:0.1", "LOW must be below HIGH, not 0.3 >= 0.1"),
    ("weight_decay=0:0.1:log", "a log range must stay above zero, not start at 0"),
    ("whiten_kernel=1:30", "whiten_kernel=30: expected"),                 # a shape it forbids
    ("flip=alternate,sideways", "flip='sideways': expected one of alternate, random"),
    ("label_smoothing=0.1:2", "label_smoothing=2.0: expected a number in [0, 1]"),
    ("convs_per_group=2:3", "convs_per_group takes one of a few values; list them"),
    ("activation=gelu", "give at least two choices"),
    ("epochs=a:3", "'a' is not a number"),
])
def test_a_bad_space_is_one_line_and_exit_2_before_any_training(item, said, capsys, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(PreparedRun, "__init__", lambda *a, **k: pytest.fail("trained"))
    assert _tune("--space", item, storage=_storage(tmp_path)) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not (tmp_path / "tune.db").exists()


def test_a_confirmation_too_small_to_tell_is_refused_before_training(capsys, tmp_path):
    assert _tune("--space", "label_smoothing=0.1:0.3", "--confirm", "1", "--confirm-runs",
                 "2", storage=_storage(tmp_path)) == 2
    assert "--confirm 1 needs --confirm-runs 3 or more: with 2, a difference from the base " \
           "must exceed 13 standard errors" in capsys.readouterr().err
    plan = hlb.bench.tune.check_plan(hlb.bench.tune.Plan(SMOKE, [], [], runs=2, confirm=3))
    assert plan.confirm_runs == 3      # t(1 - 0.05/6) is 7.6 with 2 df, 38 with 1


def test_a_space_parses_as_set_does_ints_suggest_ints_and_tuples_take_slashes():
    assert parse_space("epochs=1.5:3", SMOKE).integer is False
    dim = parse_space("cutout=4:16:log", SMOKE)
    assert (dim.low, dim.high, dim.log, dim.integer) == (4, 16, True, True)
    assert parse_space("widths=8,16,16/16,32,32", SMOKE).choices == ("8,16,16", "16,32,32")
    assert parse_space("compile=true,false", SMOKE).value_text("false") == "compile=false"
    with pytest.raises(UsageError, match="a choice is given twice"):
        parse_space("compile=true,yes", SMOKE)


def test_optuna_missing_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    real = builtins.__import__

    def without_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("No module named 'optuna'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_optuna)
    assert _tune("--space", "label_smoothing=0.1:0.3", storage=_storage(tmp_path)) == 1
    assert capsys.readouterr().err == ('error: hlb tune needs Optuna: pip install ".[tune]" '
                                       '(or pip install optuna)\n')


# The storage and its faults: one line, nothing lost


def test_a_storage_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    url = f"sqlite:///{tmp_path / 'file' / 'tune.db'}"
    assert _tune("--space", "label_smoothing=0.1:0.3", storage=url) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_corrupt_storage_is_one_line_and_left_as_it_was(tmp_path, capsys, planted):
    db = tmp_path / "tune.db"
    db.write_bytes(b"not a database" * 100)
    assert _tune("--space", "label_smoothing=0.1:0.3", storage=_storage(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: storage sqlite:///{db}: ") and err.count("\n") == 1
    assert "nothing in it was changed" in err
    assert db.read_bytes() == b"not a database" * 100


def test_a_study_of_another_space_is_refused_and_kept(tmp_path, capsys, planted):
    url = _storage(tmp_path)
    assert _tune("--space", "label_smoothing=0.1:0.3", "--trials", "2", "--no-save",
                 storage=url) == 0
    capsys.readouterr()
    assert _tune("--space", "label_smoothing=0.1:0.4", "--trials", "3", storage=url) == 2
    err = capsys.readouterr().err
    assert "study 'smoke-accuracy' in sqlite:///" in err and "its space differ" in err
    assert len(_trials(url)) == 2


def test_a_password_in_a_storage_url_is_never_shown():
    from hlb.bench.tune import shown_url
    assert shown_url("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"


# The search: counts, seeds, failures, the end


def test_the_study_ends_at_the_asked_total_and_the_same_command_goes_on(tmp_path, capsys,
                                                                        planted):
    url = _storage(tmp_path)
    flags = ["--space", "label_smoothing=0.05:0.35", "--runs", "3", "--no-save"]
    assert _tune(*flags, "--trials", "3", storage=url) == 0
    assert _states(_trials(url)) == ["COMPLETE"] * 3
    assert _tune(*flags, "--trials", "5", storage=url) == 0
    trials = _trials(url)
    assert _states(trials) == ["COMPLETE"] * 5
    # Every trial ran the same seeds, 0..2: trials pair up.
    assert {tuple(r["seed"] for r in t.user_attrs["runs"]["runs"]) for t in trials} == {(0, 1, 2)}
    out = capsys.readouterr().out
    assert "5 complete, 0 pruned, 0 failed trial(s) in study smoke-accuracy" in out


def test_the_same_sampler_seed_gives_the_same_first_trials(tmp_path, planted):
    params = []
    for name in ("a.db", "b.db"):
        url = _storage(tmp_path, name)
        assert _tune("--space", "label_smoothing=0.05:0.35", "--space", "flip=alternate,random",
                     "--trials", "3", "--sampler-seed", "7", "--no-save", storage=url) == 0
        params.append([t.params for t in _trials(url)])
    assert params[0] == params[1] and len({p["label_smoothing"] for p in params[0]}) == 3


def test_a_diverging_trial_is_failed_and_the_search_goes_on(tmp_path, capsys, planted):
    url = _storage(tmp_path)
    assert _tune("--space", "label_smoothing=0.3:0.6", "--trials", "4", "--sampler-seed", "3",
                 "--no-save", storage=url) == 0
    trials = _trials(url)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.params["label_smoothing"] > 0.45 for t in failed)
    assert all("diverged" in t.user_attrs["failure"] for t in failed)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert "failed: run 0 diverged" in capsys.readouterr().out


def test_pruning_stops_a_trial_below_the_target_by_its_stated_test():
    plan = hlb.bench.tune.Plan(SMOKE, [], [], "time", 0.5, runs=4)
    assert prune_reason(plan, [0.40, 0.41], None).startswith("below the target 50.00%")
    assert prune_reason(plan, [0.49, 0.52], None) is None         # not below by the test
    assert prune_reason(plan, [0.40, 0.41, 0.40, 0.41], None) is None    # the last: no look
    plan = hlb.bench.tune.Plan(SMOKE, [], [], "accuracy", runs=4)
    assert "below the best trial by 1.00 points" in prune_reason(
        plan, [0.50, 0.51, 0.52], [0.51, 0.52, 0.53, 0.5])
    # Feasible: the mean may sit below the target when the test cannot tell.
    assert constraint([0.49, 0.52], 0.5) <= 0 < constraint([0.45, 0.46], 0.5)


def test_time_objective_end_to_end_confirmed_recorded_listed_and_plotted(
        tmp_path, capsys, planted, runs_dir):
    url, out = _storage(tmp_path), tmp_path / "tune.json"
    assert _tune("--space", "label_smoothing=0.05:0.35", "--objective", "time", "--target",
                 "0.45", "--runs", "3", "--trials", "5", "--prune", "--sampler-seed", "1",
                 "--confirm", "2", "--json", str(out), storage=url) == 0
    text = capsys.readouterr().out
    assert text.startswith("hlb-cifar10 tune: study smoke-time in sqlite:///")
    assert "ranked by mean time among the feasible trials: accuracy not below 45.00% by a " \
           "one-sided t-test at level 0.05" in text
    assert "confirmation: the 2 best on fresh seeds 3..5, interleaved with the base" in text
    data = json.loads(out.read_text())
    assert data["format"] == "hlb-cifar10 tune v1" and data["objective"] == "time"
    trials = data["trials"]
    assert len([t for t in trials if t["state"] in ("complete", "pruned")]) == 5
    best = min((t for t in trials if t["state"] == "complete" and t["feasible"]),
               key=lambda t: t["time_mean"])
    assert data["best_trials"][0] == best["number"]
    assert data["overrides"][-1] == best["values"][0] and data["summary"]["n"] == 3
    cells = data["confirmation"]["cells"]
    assert len(cells) == 2 and [r["seed"] for r in cells[0]["runs"]] == [3, 4, 5]
    assert len(list(runs_dir.glob("*/record.json"))) == 1
    assert cli.main(["runs"]) == 0
    assert "tune smoke" in capsys.readouterr().out
    assert cli.main(["board"]) == 0
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(out), "-o", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 10_000


# Workers: two processes on one file, one killed mid-trial


def _worker(tmp_path, url, *flags, sleep="0"):
    code = PLANT_IN_WORKER + "import sys\nfrom hlb.bench import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PLANTED_SLEEP": sleep,
           "HLB_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.Popen([sys.executable, "-c", code, "tune", *TINY, "--storage", url,
                             "--space", "label_smoothing=0.05:0.35", "--no-save", *flags],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_sqlite_study_with_no_trial_lost_or_doubled(tmp_path):
    url = _storage(tmp_path)
    workers = [_worker(tmp_path, url, "--trials", "6", "--sampler-seed", "5", sleep="0.05")
               for _ in range(2)]
    outs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = [t for t in _trials(url) if not t.user_attrs.get("surplus")]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert _states(trials).count("COMPLETE") == 6
    ran = [line.split()[1] for out, _ in outs for line in out.splitlines()
           if line.startswith("trial ")]
    assert sorted(ran, key=int) == [str(t.number) for t in trials]      # each ran once
    # The same --sampler-seed in both: the draws follow the trial, so no two are alike.
    values = [t.params["label_smoothing"] for t in trials]
    assert len(set(values)) == len(values)


def test_a_worker_killed_mid_trial_loses_that_trial_alone_and_the_study_resumes(
        tmp_path, capsys, planted):
    url = _storage(tmp_path)
    worker = _worker(tmp_path, url, "--trials", "3", "--runs", "2", "--heartbeat", "1",
                     sleep="1")
    deadline = time.time() + 90
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            states = _states(_trials(url))
        except Exception:           # the study is not there yet
            continue
        if states[:2] == ["COMPLETE", "RUNNING"]:
            break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert _states(_trials(url)) == ["COMPLETE", "RUNNING"]
    assert _tune("--space", "label_smoothing=0.05:0.35", "--trials", "3", "--runs", "2",
                 "--heartbeat", "1", "--no-save", storage=url) == 0
    trials = _trials(url)
    assert _states(trials).count("COMPLETE") == 3 and trials[1].state.name == "FAIL"
    # The killed trial was retried with its values, once its heartbeat went silent.
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retried and retried[0].params == trials[1].params
    out = capsys.readouterr().out
    assert "3 complete, 0 pruned, 1 failed" in out, out


# The Python API, on a real tiny trial


def test_hlb_tune_returns_the_result_without_printing_after_a_real_tiny_trial(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hlb.bench.runs, "load_data", lambda data_dir=None: synthetic_cifar())
    tiny = ["train_images=256", "test_images=128", "batch_size=64", "whiten_init_images=128",
            "widths=8,16,16", "epochs=1"]
    result = hlb.tune("smoke", space=["label_smoothing=0.1:0.3"], runs=1, trials=1,
                      overrides=tiny, device="cpu", storage=_storage(tmp_path), sampler_seed=0)
    assert capsys.readouterr() == ("", "")
    assert [r.state for r in result.rows] == ["complete"] and result.best == result.rows
    row = result.rows[0]
    assert 0.1 <= float(row.texts[0].split("=")[1]) <= 0.3
    assert row.results[0].seed == 0 and 0.05 < row.value <= 1 and row.value == row.acc_mean
    assert not math.isnan(row.time_mean)


def test_ctrl_c_fails_the_trial_in_flight_alone_and_the_same_command_goes_on(
        tmp_path, capsys, planted, monkeypatch):
    url, real = _storage(tmp_path), PreparedRun.run
    flags = ["--space", "label_smoothing=0.05:0.35", "--trials", "3", "--no-save"]

    def interrupted(self, seed, run=0, **kwargs):
        if len(_trials(url)) == 2 and run == 1:
            raise KeyboardInterrupt
        return real(self, seed, run, **kwargs)

    monkeypatch.setattr(PreparedRun, "run", interrupted)
    assert _tune(*flags, storage=url) == 130
    assert _states(_trials(url)) == ["COMPLETE", "FAIL"]
    assert "the same command goes on" in capsys.readouterr().err
    monkeypatch.setattr(PreparedRun, "run", real)
    assert _tune(*flags, storage=url) == 0
    assert _states(_trials(url)) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]

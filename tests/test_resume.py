"""--resume: an interrupted invocation goes on, for real (a signal to a process, a SIGKILLed
torchrun worker), and a resume that is not the interrupted command, or a record cut short or
edited, is refused in one line (here and in `runs`, `plot` and `compare`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hlb.bench.runs
from conftest import ctrl_c_as_at_a_terminal, synthetic_cifar
from hlb.bench.cli import main
from hlb.recipes import get_recipe
from hlb.train import PreparedRun
from test_dist import _children, _env, _rank_of, _torchrun

ROOT = Path(__file__).resolve().parents[1]
# About a second a run on 2 CPU cores: slow enough to interrupt after two of five.
SMALL = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=1000",
         "--set", "test_images=500", "--set", "epochs=0.5", "--set", "batch_size=100",
         "--set", "whiten_init_images=500", "--set", "eval_batch_size=500",
         "--set", "widths=8,16,16"]
# In this process, on synthetic data: a run in a fraction of a second.
TINY = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=256",
        "--set", "test_images=128", "--set", "batch_size=64", "--set", "epochs=1",
        "--set", "whiten_init_images=128", "--set", "widths=8,16,16"]


def _runs_in(path):
    try:
        return len(json.loads(path.read_text())["runs"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _wait_for_runs(proc, path, n, timeout=180):
    """Wait until the record at `path` (rewritten after every round) holds n runs."""
    deadline = time.monotonic() + timeout
    while _runs_in(path) < n:
        assert proc.poll() is None, "ended before it could be interrupted"
        assert time.monotonic() < deadline, "no record with enough runs in time"
        time.sleep(0.05)


def _check_resumed(before, after, n_runs=5):
    """Seeds 0..n-1 once each; the runs of `before` (and their epoch rows) as they were."""
    assert [r["seed"] for r in after["runs"]] == list(range(n_runs))
    kept = [r["run"] for r in before["runs"]]
    assert after["runs"][:len(kept)] == before["runs"]
    assert [e for e in after["epochs"] if e["run"] in kept] == before["epochs"]
    assert after["stopped"] is None and after["summary"]["n"] == n_runs
    assert after["runs_asked"] == n_runs and after["resumed_from"][-1]["runs"] == kept


def _run_main(args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=timeout)


def _interrupt_after_two(args, out):
    """main.py with `args` and --json `out`, sent SIGINT once `out` holds two runs."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=_env(), preexec_fn=ctrl_c_as_at_a_terminal)
    try:
        _wait_for_runs(proc, out, 2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr


def test_an_interrupted_invocation_resumes_where_it_stopped(cifar_dir, tmp_path, runs_dir):
    out = tmp_path / "r.json"
    args = [*SMALL, "--runs", "5", "--data-dir", str(cifar_dir)]
    _interrupt_after_two(args, out)
    before = json.loads(out.read_text())
    assert 2 <= len(before["runs"]) < 5 and before["runs_asked"] == 5
    result = _run_main([*args, "--resume", str(out)])
    assert result.returncode == 0, result.stderr
    assert "kept as they were" in result.stdout and "5 run(s) finished" in result.stdout
    after = json.loads(out.read_text())            # the --resume file, rewritten in place
    _check_resumed(before, after)
    kept = sorted(runs_dir.glob("*/record.json"))  # the interrupted one and the whole one
    assert any(json.loads(p.read_text()) == after for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_an_interrupted_sweep_resumes_every_cell(cifar_dir, tmp_path):
    out = tmp_path / "s.json"
    flags = [x if x != "epochs=1" else "epochs=2" for x in TINY]     # a third of a second a run
    args = ["sweep", *flags, "--vary", "bias_lr=0.03,0.1", "--runs", "5",
            "--data-dir", str(cifar_dir),
            "--no-save"]
    _interrupt_after_two(args, out)                # two rounds: the base's runs 0 and 1
    before = json.loads(out.read_text())
    assert all(len(part["runs"]) >= 2 for part in [before, *before["cells"]])
    assert len(before["runs"]) < 5 and before["stopped"]
    result = _run_main([*args, "--resume", str(out)])
    assert result.returncode == 0, result.stderr
    assert "kept as they were" in result.stdout and result.stdout.count("#  cell") == 1
    after = json.loads(out.read_text())
    assert [c["name"] for c in after["cells"]] == ["bias_lr=0.03", "bias_lr=0.1"]
    for was, now in zip([before, *before["cells"]], [after, *after["cells"]]):
        _check_resumed(was, now)
    assert [row["n"] for row in after["table"]] == [5, 5, 5]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_torchrun_job_that_lost_a_worker_resumes(cifar_dir, tmp_path):
    out = tmp_path / "r.json"
    args = [*SMALL, "--runs", "5", "--data-dir", str(cifar_dir), "--no-save"]
    proc = subprocess.Popen([*_torchrun(2), *args, "--json", str(out)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_runs(proc, out, 2)               # the first round, runs 0 and 1
        rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode != 0
    before = json.loads(out.read_text())
    assert len(before["runs"]) in (2, 4) and "a worker stopped" in before["stopped"], stderr
    result = subprocess.run([*_torchrun(2), *args, "--resume", str(out)], capture_output=True,
                            text=True, cwd=ROOT, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("5 run(s) finished") == 1
    _check_resumed(before, json.loads(out.read_text()))


@pytest.fixture
def synthetic_data(monkeypatch):
    data = synthetic_cifar(256, 128)
    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)


def _interrupt_at(monkeypatch, run, when=lambda recipe: True):
    """A run raises KeyboardInterrupt the first time it is asked for `run` (of a recipe
    that `when` picks); returns the list of (lr, run) it was asked for."""
    real_train_run, asked, stop_at = PreparedRun.run, [], run

    def train_run(self, *args, run=0, **kwargs):
        recipe = self.recipe
        asked.append((recipe.bias_lr, run))
        if run == stop_at and when(recipe) and asked.count((recipe.bias_lr, run)) == 1:
            raise KeyboardInterrupt
        return real_train_run(self, *args, run=run, **kwargs)

    monkeypatch.setattr(PreparedRun, "run", train_run)
    return asked


def test_compare_resumes_both_arms(synthetic_data, monkeypatch, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    flags = " ".join(TINY[4:])
    args = ["compare", "--recipe", "smoke", "--device", "cpu", "--runs", "4",
            "--a", flags, "--b", flags + " --set bias_lr=0.03", "--no-save"]
    asked = _interrupt_at(monkeypatch, 2, when=lambda recipe: recipe.bias_lr == 0.03)
    assert main([*args, "--json", str(out)]) == 130
    before = json.loads(out.read_text())
    # Arm A's run 2 finished before B's was interrupted: it is kept too.
    assert [len(before[arm]["runs"]) for arm in "ab"] == [3, 2]
    assert main([*args, "--resume", str(out)]) == 0
    after = json.loads(out.read_text())
    for arm in "ab":
        _check_resumed(before[arm], after[arm], 4)
    assert asked.count((get_recipe("smoke").bias_lr, 2)) == 1     # A's run 2 was not run again
    assert after["comparison"]["test"] == "paired" and after["comparison"]["a"]["n"] == 4
    assert "paired over 4 seeds" in capsys.readouterr().out


@pytest.fixture(scope="module")
def interrupted_text(tmp_path_factory):
    """A record of 2 runs asked, interrupted after run 0 (made once for this file)."""
    out = tmp_path_factory.mktemp("interrupted") / "r.json"
    with pytest.MonkeyPatch.context() as monkeypatch:
        data = synthetic_cifar(256, 128)
        monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)
        _interrupt_at(monkeypatch, 1)
        assert main([*TINY, "--runs", "2", "--no-save", "--json", str(out)]) == 130
    return out.read_text()


@pytest.fixture
def interrupted(interrupted_text, synthetic_data, tmp_path):
    """That record, in a file of this test's own; returns (its path, its dict)."""
    path = tmp_path / "r.json"
    path.write_text(interrupted_text)
    return path, json.loads(interrupted_text)


def _one_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


@pytest.mark.parametrize("extra, edit, status, message", [
    (["--recipe", "94"], None, 2, "not the interrupted command: the recipe 94 here, smoke"),
    (["--set", "bias_lr=3"], None, 2, "--set train_images=256"),
    (["--seed", "1"], None, 2, "--seed 1 here, 0 in the record"),
    (["--target-acc", "0.5"], None, 2, "--target-acc 0.5 here, None in the record"),
    ([], lambda r: r["recipe"].update(bias_lr=99.0), 2,
     "recipe value bias_lr (the named recipe changed?)"),
    ([], lambda r: r.update(data_fingerprint="other"), 2, "the data differs"),
    ([], lambda r: r["environment"]["code"].update(source_sha256="0" * 64), 2,
     "the code differs"),
    ([], lambda r: r.pop("runs_asked"), 1, "cannot be resumed"),
    ([], lambda r: r["runs"][0].pop("tta_acc"), 1, "run 0 lacks tta_acc"),
    ([], lambda r: r["runs"][0].update(diverged="no"), 1, "run 0 has a bad diverged"),
    ([], lambda r: r["runs"][0].update(extra=1), 1, "run 0 has unknown extra"),
    ([], lambda r: r["epochs"][0].update(val_acc="high"), 1, "epoch row 0 has a bad val_acc"),
    ([], lambda r: r["epochs"][0].update(run=1), 1, "belongs to run 1"),
    ([], lambda r: r.update(overrides="bias_lr=3"), 1, "overrides is not a list"),
    ([], lambda r: r.update(seed="0"), 1, "seed '0' is not a whole number"),
    ([], lambda r: r.pop("recipe"), 1, "recipe is missing"),
])
def test_a_resume_that_differs_or_a_bad_record_is_refused(interrupted, capsys, extra, edit,
                                                          status, message):
    path, record = interrupted
    if edit:
        edit(record)
        path.write_text(json.dumps(record))
    runs = ["--runs", "5"] if "--runs" in extra else ["--runs", "2"]
    capsys.readouterr()
    assert main([*TINY, *runs, *extra, "--no-save", "--resume", str(path)]) == status
    assert message in _one_line(capsys)


def test_runs_must_be_the_same_and_another_commit_may_be_allowed(interrupted, capsys):
    path, record = interrupted
    assert main([*TINY, "--runs", "3", "--no-save", "--resume", str(path)]) == 2
    assert "--runs 3 here, 2 in the record" in _one_line(capsys)
    record["environment"]["git_commit"] = "0" * 40
    record["environment"]["code"]["source_sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    assert main([*TINY, "--runs", "2", "--no-save", "--resume", str(path),
                 "--allow-other-commit"]) == 0
    after = json.loads(path.read_text())
    _check_resumed(record, after, 2)
    assert after["resumed_from"][0]["git_commit"] == "0" * 40


def test_a_compare_record_and_a_plain_one_are_not_mixed_up(interrupted, tmp_path, capsys):
    path, record = interrupted
    other = tmp_path / "cmp.json"
    other.write_text(json.dumps({"comparison": {}, "a": record, "b": record}))
    assert main([*TINY, "--runs", "2", "--resume", str(other)]) == 2
    assert "is a compare record; resume it with python main.py compare" in _one_line(capsys)
    assert main(["compare", "--runs", "2", "--resume", str(path)]) == 2
    assert "is not a compare record" in _one_line(capsys)


# Records cut short or edited by hand, refused alike by --resume, runs, plot and compare.
BROKEN = {
    "truncated": lambda text: text[:len(text) // 2],
    "not a record": lambda text: "[1, 2]",
    "duplicate run": lambda text: _edit(text, lambda r: r["runs"].append(r["runs"][0])),
    "run out of range": lambda text: _edit(text, lambda r: r["runs"][0].update(run=7, seed=7)),
    "seed not seed + run": lambda text: _edit(text, lambda r: r["runs"][0].update(seed=5)),
    "run index not a number": lambda text: _edit(text, lambda r: r["runs"][0].update(run="0")),
    "runs not rows": lambda text: _edit(text, lambda r: r.update(runs=[1])),
}
SAID = {"truncated": "is not JSON", "not a record": "is not an hlb record",
        "duplicate run": "run 0 appears twice", "run out of range": "run 7 is out of range",
        "seed not seed + run": "has seed 5, not 0", "run index not a number": "run index '0'",
        "runs not rows": "runs or epochs are not rows"}


def _edit(text, change):
    record = json.loads(text)
    change(record)
    return json.dumps(record)


@pytest.mark.parametrize("fault", sorted(BROKEN))
def test_a_broken_record_is_one_line_everywhere(interrupted, tmp_path, runs_dir, capsys,
                                                fault):
    path, _ = interrupted
    broken = runs_dir / "20250101-000000-smoke-00000000" / "record.json"
    broken.parent.mkdir()
    broken.write_text(BROKEN[fault](path.read_text()))
    capsys.readouterr()
    assert main([*TINY, "--runs", "2", "--resume", str(broken)]) == 1
    assert SAID[fault] in _one_line(capsys)
    assert main(["compare", str(path), str(broken)]) == 1
    assert SAID[fault] in _one_line(capsys)
    assert main(["plot", str(broken), "-o", str(tmp_path / "p.png")]) == 1
    assert SAID[fault] in _one_line(capsys)
    assert main(["runs"]) == 0
    captured = capsys.readouterr()
    assert "(unreadable)" in captured.out and SAID[fault] in captured.out
    assert "Traceback" not in captured.err + captured.out


def test_a_finished_record_resumes_to_itself(interrupted, capsys):
    path, _ = interrupted
    assert main([*TINY, "--runs", "2", "--no-save", "--resume", str(path)]) == 0
    done = json.loads(path.read_text())
    assert main([*TINY, "--runs", "2", "--no-save", "--resume", str(path)]) == 0
    again = json.loads(path.read_text())
    assert again["runs"] == done["runs"] and again["epochs"] == done["epochs"]
    assert [len(entry["runs"]) for entry in again["resumed_from"]] == [1, 2]

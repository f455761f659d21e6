"""Faults caused for real: the tool keeps what finished, says what happened in one line, and
exits with a status that tells."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hlb.files
import hlb.bench.runs
from conftest import synthetic_cifar
from hlb.bench.cli import main
from hlb.train import PreparedRun

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=400",
        "--set", "test_images=200", "--set", "batch_size=100", "--set", "epochs=1",
        "--set", "whiten_init_images=200"]


@pytest.fixture
def synthetic_data(monkeypatch):
    """`python main.py` in this process, on synthetic data instead of CIFAR-10."""
    data = synthetic_cifar(512, 256)
    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_one_diverging_run_is_counted_and_the_others_go_on(synthetic_data, monkeypatch,
                                                           tmp_path, capsys):
    real_train_run = PreparedRun.run

    def train_run(self, *args, run=0, **kwargs):
        if run != 1:
            return real_train_run(self, *args, run=run, **kwargs)
        table = self.schedule.table.clone()          # blow up the second run only:
        self.schedule.table.fill_(1e9)               # a learning rate of 1e9 at every step
        try:
            return real_train_run(self, *args, run=run, **kwargs)
        finally:
            self.schedule.table.copy_(table)

    monkeypatch.setattr(PreparedRun, "run", train_run)
    out = tmp_path / "r.json"
    status = main([*TINY, "--runs", "3", "--json", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    assert "1 run(s) diverged" in _one_line(captured.err)
    assert "2 run(s) finished, 1 diverged" in captured.out
    record = json.loads(out.read_text())
    assert [r["diverged"] for r in record["runs"]] == [False, True, False]
    assert record["summary"]["n"] == 2
    finished = [r["tta_acc"] for r in record["runs"] if not r["diverged"]]
    assert record["summary"]["acc_mean"] == pytest.approx(sum(finished) / 2)


def test_out_of_memory_is_one_line_and_keeps_the_finished_runs(synthetic_data, monkeypatch,
                                                               tmp_path, capsys):
    real_train_run = PreparedRun.run

    def train_run(self, *args, run=0, **kwargs):
        if run == 1:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                "of 3.9 GiB of which 1.2 GiB is free.")
        return real_train_run(self, *args, run=run, **kwargs)

    monkeypatch.setattr(PreparedRun, "run", train_run)
    out = tmp_path / "r.json"
    status = main([*TINY, "--runs", "3", "--json", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    line = _one_line(captured.err)
    assert "Tried to allocate 2.00 GiB" in line and "at batch_size 100" in line
    assert "--set batch_size=50" in line
    record = json.loads(out.read_text())
    assert len(record["runs"]) == 1 and record["stopped"].startswith("out of GPU memory")


def test_a_full_disk_while_writing_the_record_leaves_nothing(synthetic_data, monkeypatch,
                                                             tmp_path, capsys):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hlb.files.os, "fsync", no_space)
    status = main([*TINY, "--json", str(tmp_path / "r.json")])
    line = _one_line(capsys.readouterr().err)
    assert status == 1
    assert "could not write the record" in line and "No space left on device" in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot create files in, for real: a read-only mount when root
    (root ignores permission bits), else a folder without write permission."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
        yield locked
        locked.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                              str(locked)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here: " + mounted.stderr.decode().strip())
    try:
        yield locked
    finally:
        subprocess.run(["umount", str(locked)], check=True)


def test_an_unwritable_results_folder_fails_before_training(unwritable_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *TINY, "--json", str(unwritable_dir / "r.json"),
         "--data-dir", str(tmp_path / "never")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "cannot write in" in _one_line(result.stderr)
    assert not (tmp_path / "never").exists()       # stopped before touching the data


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_keeps_the_finished_runs_and_exits_130(sig, cifar_dir, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *TINY, "--runs", "100",
         "--data-dir", str(cifar_dir), "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:                   # wait until a run has finished
            if " tta |" in line:
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted after" in stderr and "Traceback" not in stderr
    record = json.loads(out.read_text())
    assert 1 <= len(record["runs"]) < 100 and record["stopped"] == "interrupted"
    assert record["summary"]["n"] == len(record["runs"])
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_two_invocations_share_a_fresh_data_dir(cifar_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(cifar_dir / "cifar-10-batches-py", data / "cifar-10-batches-py")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), *TINY,
                               "--data-dir", str(data), "--json", str(tmp_path / f"{i}.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT)
             for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    prints = {json.loads((tmp_path / f"{i}.json").read_text())["data_fingerprint"]
              for i in range(2)}
    assert len(prints) == 1
    # One cache, built once, and no temporary file left behind.
    assert sorted(p.name for p in data.iterdir()) == [".hlb.lock", "cifar-10-batches-py",
                                                      "cifar10_uint8.pt"]


def _fail_run_1(monkeypatch):
    real_train_run = PreparedRun.run

    def train_run(self, *args, run=0, **kwargs):
        if run == 1:
            raise RuntimeError("injected fault")
        return real_train_run(self, *args, run=run, **kwargs)

    monkeypatch.setattr(PreparedRun, "run", train_run)


def test_an_unexpected_error_is_one_line_keeps_the_runs_and_saves_the_traceback(
        synthetic_data, monkeypatch, tmp_path, runs_dir, capsys):
    _fail_run_1(monkeypatch)
    out = tmp_path / "r.json"
    status = main([*TINY, "--runs", "3", "--json", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert status == 1
    assert "unexpected RuntimeError (injected fault)" in line and "HLB_DEBUG=1" in line
    record = json.loads(out.read_text())
    assert [r["run"] for r in record["runs"]] == [0] and record["summary"]["n"] == 1
    assert record["stopped"].startswith("unexpected RuntimeError")
    saved = line.split("the traceback is in ")[1].split(";")[0]
    kept, = runs_dir.glob("*/record.json")
    assert Path(saved).parent == kept.parent          # beside the kept record
    text = Path(saved).read_text()
    assert text.startswith("Traceback") and "injected fault" in text and "train_run" in text


def test_hlb_debug_shows_the_raw_traceback(synthetic_data, monkeypatch, tmp_path, capsys):
    _fail_run_1(monkeypatch)
    monkeypatch.setenv("HLB_DEBUG", "1")
    out = tmp_path / "r.json"
    assert main([*TINY, "--runs", "2", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "RuntimeError: injected fault" in err
    assert len(json.loads(out.read_text())["runs"]) == 1


def test_an_unexpected_error_before_the_runs_is_one_line_too(monkeypatch, runs_dir, capsys):
    def broken(*args, **kwargs):
        raise ValueError("no such thing\nsecond line")

    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", broken)
    assert main(TINY) == 1
    line = _one_line(capsys.readouterr().err)
    assert "unexpected ValueError (no such thing)" in line
    saved, = runs_dir.glob("traceback-*.txt")
    assert str(saved) in line and "second line" in saved.read_text()
    monkeypatch.setenv("HLB_DEBUG", "1")
    with pytest.raises(ValueError, match="no such thing"):
        main(TINY)


def test_a_failed_compile_is_one_line_and_the_runs_go_on_eagerly(synthetic_data, monkeypatch,
                                                                 tmp_path, capsys):
    # As on a GPU without a working Triton: the compiled callables fail when first called.
    import dataclasses
    train = sys.modules["hlb.train"]         # the module: hlb.train is the Python API's function

    def compiling(recipe, device):
        return dataclasses.replace(real(recipe, device), compile=True, warmup=True)

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("Cannot find a working triton installation. Either the package "
                               "is not installed or it is too old.\nMore lines")
        return call

    real = train.execution
    monkeypatch.setattr(train, "execution", compiling)
    monkeypatch.setattr(torch, "compile", broken)
    out = tmp_path / "r.json"
    assert main([*TINY, "--runs", "2", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.out.splitlines() if line.startswith("note: ")]
    assert notes == ["note: compile failed on this device (RuntimeError: Cannot find a working "
                     "triton installation. Either the package is not installed or it is too "
                     "old.); running eagerly instead (--set compile=false --set "
                     "capture_step=false skips them)"]
    assert "Traceback" not in captured.err and captured.err == ""
    record = json.loads(out.read_text())
    assert record["fallback"] == notes[0][len("note: "):] and record["summary"]["n"] == 2

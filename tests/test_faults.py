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
from conftest import ctrl_c_as_at_a_terminal, synthetic_cifar
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
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=ctrl_c_as_at_a_terminal)
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
                     "old.); running eagerly instead (--set compile=false skips it)"]
    assert "Traceback" not in captured.err and captured.err == ""
    record = json.loads(out.read_text())
    assert record["fallback"] == notes[0][len("note: "):] and record["summary"]["n"] == 2


# The warm-up's staged fallback (hlb.train.PreparedRun.warmup), its stages made to fail on the
# CPU: torch.compile's callables raise what dynamo raises when inductor finds no working Triton,
# and TrainStep.capture is replaced by one that runs a step as the real one's warm-up steps do
# (so compiled code runs there) and then fails as a CUDA graph capture does, or not.

TRITON = "Cannot find a working triton installation. More info: ..."
CAPTURE = "CUDA error: operation not permitted when stream is capturing"
SMALL = ["train_images=200", "test_images=100", "batch_size=100", "epochs=1",
         "whiten_init_images=100", "widths=8,16,16"]


def inductor(*args):
    """Stands for the backend in the errors made here."""


def NO_TRITON():
    from torch._dynamo.exc import BackendCompilerFailed
    return BackendCompilerFailed(inductor, RuntimeError(TRITON), None)


def _broken_compile(error):
    def compile(fn, **kwargs):
        def call(*args, **kw):
            raise error()
        return call
    return compile


def _capture(fails):
    def capture(self, total_steps, warmup_steps=3):
        self._step(self.image_sizes[0])
        if fails:
            raise RuntimeError(CAPTURE)
        self.reset()
    return capture


def _prepared(monkeypatch, compile_error, capture_fails, compile=True, capture=True):
    """A small PreparedRun on the CPU whose execution asks for compile and capture, not yet
    warmed up; `compile_error` (a callable making the error, or None) is what compiled code
    raises."""
    import dataclasses
    import functools
    import hlb.optim
    from hlb.bench.overrides import override
    from hlb.execution import execution
    from hlb.recipes import RECIPES
    from hlb.step import TrainStep
    from hlb.train import prepare
    compiling = _broken_compile(compile_error) if compile_error else lambda fn, **kwargs: fn
    monkeypatch.setattr(torch, "compile", compiling)
    # Muon's compiled iteration is made once a process: here once a test, with this compile.
    monkeypatch.setattr(hlb.optim, "compiled_orthogonalize_all", functools.cache(
        hlb.optim.compiled_orthogonalize_all.__wrapped__))
    monkeypatch.setattr(TrainStep, "capture", _capture(capture_fails))
    recipe = override(RECIPES["smoke"], SMALL)
    how = dataclasses.replace(execution(recipe, "cpu"), compile=compile, capture=capture,
                              warmup=True)
    return prepare(recipe, synthetic_cifar(256, 128), "cpu", how)


def _warmed(*args, **kwargs):
    run = _prepared(*args, **kwargs)
    return run, run.warmup()


COMPILE_NOTE = (f"compile failed on this device (BackendCompilerFailed: backend='inductor' "
                f"raised: RuntimeError: {TRITON}); ")


def test_a_failed_compile_keeps_the_captured_step(monkeypatch):
    run, seconds = _warmed(monkeypatch, NO_TRITON, capture_fails=False)
    assert seconds > 0 and not run.execution.compile and run.execution.capture
    assert run.notes == [COMPILE_NOTE + "capturing the step without it instead (--set "
                         "compile=false skips it)"]
    assert run.fallback == run.notes[0]


def test_a_failed_capture_after_a_failed_compile_runs_eagerly_with_a_line_for_each(
        monkeypatch):
    run, _ = _warmed(monkeypatch, NO_TRITON, capture_fails=True)
    assert not (run.execution.compile or run.execution.capture)
    assert run.notes == [COMPILE_NOTE + "capturing the step without it instead (--set "
                         "compile=false skips it)",
                         f"capture failed on this device (RuntimeError: {CAPTURE}); running "
                         "eagerly instead (--set capture_step=false skips it)"]
    assert run.fallback == "; then ".join(run.notes) and "\n" not in run.fallback


def test_a_failed_capture_alone_keeps_the_compiled_step(monkeypatch):
    run, _ = _warmed(monkeypatch, None, capture_fails=True)
    assert run.execution.compile and not run.execution.capture
    assert run.notes == [f"capture failed on this device (RuntimeError: {CAPTURE}); running "
                         "the compiled step uncaptured instead (--set capture_step=false "
                         "skips it)"]


def test_what_fails_with_compile_and_capture_off_is_raised_after_both_notes(monkeypatch):
    run = _prepared(monkeypatch, NO_TRITON, capture_fails=False)
    monkeypatch.setattr(run, "run", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        run.warmup()
    assert [note.split(" (")[0] for note in run.notes] == [
        "compile failed on this device", "capture failed on this device"]


def _wrapped_out_of_memory():
    from torch._dynamo.exc import BackendCompilerFailed
    inner = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
                                        "has a total capacity of 3.9 GiB")
    try:
        raise inner
    except torch.cuda.OutOfMemoryError:
        return BackendCompilerFailed(lambda: None, inner, None)     # its __context__: inner


def _said_out_of_memory():
    from torch._dynamo.exc import BackendCompilerFailed
    # Only the text holds it, as when Triton's autotuning ran out of memory.
    return BackendCompilerFailed(lambda: None, RuntimeError(
        "Triton Error [CUDA]: out of memory. Tried to allocate 1.50 GiB"), None)


@pytest.mark.parametrize("error", [_wrapped_out_of_memory, _said_out_of_memory])
def test_an_out_of_memory_inside_a_compile_error_is_an_out_of_memory(error, monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed
    from hlb.train import out_of_memory
    assert isinstance(out_of_memory(error()), torch.cuda.OutOfMemoryError)
    assert out_of_memory(RuntimeError(TRITON)) is None
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate") as raised:
        _warmed(monkeypatch, error, capture_fails=False)
    assert isinstance(raised.value.__context__, BackendCompilerFailed)   # the original, kept


def test_an_out_of_memory_while_compiling_is_the_out_of_memory_line(synthetic_data,
                                                                    monkeypatch, capsys):
    import dataclasses
    train = sys.modules["hlb.train"]
    real = train.execution
    monkeypatch.setattr(train, "execution", lambda recipe, device: dataclasses.replace(
        real(recipe, device), compile=True, warmup=True))
    monkeypatch.setattr(torch, "compile", _broken_compile(_wrapped_out_of_memory))
    assert main([*TINY, "--no-save"]) == 1
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith("error: out of GPU memory (Tried to allocate 2.00 GiB) at batch_size "
                           "100; try --set batch_size=50")
    assert "note: " not in captured.out                  # no fallback was tried


def test_every_ranks_fallback_is_printed_with_its_rank(monkeypatch, capsys):
    """As rank 0 of two: the other rank's note arrives in the gathered payloads."""
    import dataclasses
    import functools
    import hlb.optim
    from hlb.bench.overrides import override
    from hlb.bench.report import Table
    from hlb.recipes import RECIPES
    train = sys.modules["hlb.train"]
    real = train.execution
    monkeypatch.setattr(train, "execution", lambda recipe, device: dataclasses.replace(
        real(recipe, device), compile=True, warmup=True))
    monkeypatch.setattr(torch, "compile", _broken_compile(lambda: RuntimeError(TRITON)))
    monkeypatch.setattr(hlb.optim, "compiled_orthogonalize_all", functools.cache(
        hlb.optim.compiled_orthogonalize_all.__wrapped__))
    recipe = override(RECIPES["smoke"], SMALL)
    prepared = hlb.bench.runs.PreparedRecipe(recipe, "cpu", synthetic_cifar(256, 128), 0)

    class TwoRanks(hlb.bench.runs.LocalScheduler):
        def gather(self, payload):
            return [payload, {**payload, "fallback": ["capture failed on this device (...)"]}]

    hlb.bench.runs._warm_up([prepared], [Table()], TwoRanks("cpu"))
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: rank 0: compile failed on this device (RuntimeError: {TRITON}); "
                     "running eagerly instead (--set compile=false skips it)",
                     "note: rank 1: capture failed on this device (...)"]
    assert prepared.record.fallback == " | ".join(note[len("note: "):] for note in notes)

"""The command line as a user runs it: `python main.py ...` in a subprocess."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train_images=400", "--set", "test_images=200", "--set", "batch_size=100",
        "--set", "epochs=1", "--set", "whiten_init_images=200"]


def run_main(*args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=full_env, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs must be at least 1"),
    (["--seed", "-1"], "--seed: must not be negative"),
    (["--recipe", "93"], "unknown recipe '93'"),
    (["--set", "bias_lr=fast"], "--set bias_lr=fast: expected a number"),
    (["--set", "speed=11"], "unknown key 'speed'; valid keys:"),
    (["--runs", "many"], "invalid int value"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--json", "/no/such/folder/r.json"], "does not exist"),
    (["--accuracy-only", "--target-acc", "0.9"], "--accuracy-only does not report"),
    (["verify"], "the following arguments are required: RECORD.json"),
])
def test_usage_errors_are_one_line_with_status_2(args, message, tmp_path, capsys):
    # In this process (a new Python for each would cost seconds); the one below is `python
    # main.py` itself.
    from hlb.bench.cli import main
    assert main([*args, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []          # failed before touching the data dir


def test_a_usage_error_of_main_py_is_one_line_with_status_2(tmp_path):
    result = run_main("--runs", "0", "--data-dir", str(tmp_path), timeout=60)
    assert result.returncode == 2 and "--runs must be at least 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    from hlb.bench.cli import main
    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path):
    with socket.socket() as s:                     # a local port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    data = tmp_path / "data"
    result = run_main("--recipe", "smoke", "--device", "cpu", "--data-dir", str(data),
                      env={"HLB_CIFAR10_URL": url}, timeout=120)
    assert result.returncode == 1
    assert url in result.stderr and "--data-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    leftovers = [p.name for p in data.iterdir()] if data.exists() else []
    assert set(leftovers) <= {".hlb.lock"}


def test_a_run_end_to_end_writes_table_summary_and_record(cifar_dir, tmp_path):
    out = tmp_path / "record.json"
    result = run_main("--recipe", "smoke", "--device", "cpu", "--runs", "2", "--seed", "3",
                      "--data-dir", str(cifar_dir), "--json", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "| train_loss |" in text and text.count(" tta |") == 2
    assert "95% CI of the mean accuracy" in text and "wall clock" in text
    assert "\r" not in text                         # not a terminal: plain lines only
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["runs"]] == [3, 4]
    assert record["recipe"]["train_images"] == 400 and record["recipe"]["epochs"] == 1.0
    assert record["overrides"] == TINY[1::2]                 # as given, in order
    assert record["summary"]["n"] == 2 and len(record["epochs"]) == 2
    assert len(record["data_fingerprint"]) >= 8
    assert record["environment"]["torch"]
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_diverging_run_sets_a_failing_status(cifar_dir, tmp_path):
    out = tmp_path / "record.json"
    result = run_main("--recipe", "smoke", "--device", "cpu", "--data-dir", str(cifar_dir),
                      "--json", str(out), *TINY, "--set", "bias_lr=1e9")
    assert result.returncode == 1
    assert "diverged" in result.stdout and "1 run(s) diverged" in result.stderr
    record = json.loads(out.read_text())
    assert record["runs"][0]["diverged"] and record["summary"]["diverged"] == 1


def test_help_says_where_a_resumed_record_goes():
    from hlb.bench.cli import build_compare_parser, build_parser
    for parser in (build_parser(), build_compare_parser()):
        text = " ".join(parser.format_help().split())
        assert "--resume RECORD.json" in text and "--allow-other-commit" in text
        assert "rewritten in place, atomically" in text and "kept under runs/" in text

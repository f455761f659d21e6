"""The GPU check's summary: it reads our records and a reference script's table."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_summary import reference_runs  # noqa: E402

REFERENCE_LOG = """\
|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
|  warmup  |      0  |     0.1000  |   0.1000  |               |        9.0000  |
|          |   eval  |     0.1000  |   0.1000  |       0.1000  |        9.5000  |
|       0  |      0  |     0.7300  |   0.5017  |               |        0.2513  |
|          |   eval  |     0.9740  |   0.9308  |       0.9392  |        2.0000  |
|       1  |   eval  |     0.9740  |   0.9308  |       0.9410  |        1.0000  |
Mean: 0.9401    Std: 0.0013
"""


def test_reference_runs_skip_the_warmup(tmp_path):
    log = tmp_path / "ref.log"
    log.write_text(REFERENCE_LOG)
    assert reference_runs(log) == ([0.9392, 0.9410], [2.0, 1.0])


def test_summary_gives_the_time_ratio(tmp_path):
    log = tmp_path / "ref.log"
    log.write_text(REFERENCE_LOG)
    record = {"recipe": {"name": "94"}, "warmup_s": 1.0,
              "environment": {"gpu": "X", "torch": "t", "cuda": "c", "date": "d"},
              "summary": {"peak_mem_reserved": 2**30},
              "runs": [{"tta_acc": 0.94, "train_time_s": 3.0, "diverged": False},
                       {"tta_acc": 0.95, "train_time_s": 3.0, "diverged": False},
                       {"tta_acc": None, "train_time_s": 0.1, "diverged": True}]}
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(record))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_summary.py"), str(ours),
                          "--reference", str(log)], capture_output=True, text=True, check=True)
    assert "94         n=2" in out.stdout
    assert "time ratio 94/reference: 2.000" in out.stdout      # 3.0 s against 1.5 s
    assert "reference  n=2" in out.stdout


FAKE_REFERENCE = """\
print("|  run  |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |")
print("|  warmup  |  eval  |  0.1  |  0.1  |  0.1000  |  9.0  |")
for run in range(200):
    print("|  |  eval  |  0.9  |  0.9  |  0.9400  |  0.5  |")
"""

TINY_FLAGS = ("--set train_images=400 --set test_images=200 --set batch_size=100 "
              "--set epochs=1 --set whiten_init_images=200")


def test_gpu_check_runs_variants_in_order_within_the_budget(cifar_dir, tmp_path):
    # On the CPU: a fake reference (its run count cut from 200 to 3), then two variants; the
    # second asks for far more runs than the budget allows and is stopped, keeping its runs.
    reference = tmp_path / "reference.py"
    reference.write_text(FAKE_REFERENCE)
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(out), "HLB_DATA_DIR": str(cifar_dir),
           "BUDGET_S": "35", "OMP_NUM_THREADS": "1",
           "VARIANTS": f"one smoke 1 {TINY_FLAGS}; many smoke 1000 {TINY_FLAGS} --set lr=4"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "0", str(reference),
                             "3"], capture_output=True, text=True, env=env, timeout=200)
    summary = (out / "summary.txt").read_text()
    assert result.stdout.endswith(summary)                    # the table comes last
    assert "reference  n=3 " in summary
    assert "one        n=1 " in summary and "time ratio one/reference" in summary
    many = json.loads((out / "ours-many.json").read_text())
    assert many["stopped"] == "interrupted" and 1 <= len(many["runs"]) < 1000
    assert many["recipe"]["lr"] == 4.0 and "stopped: interrupted" in summary
    assert result.returncode == 124                           # timeout(1): cut by the budget


def test_gpu_check_rejects_a_malformed_variant(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "VARIANTS": "x smoke"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "expected LABEL RECIPE RUNS" in result.stderr

"""The GPU check's summary: it reads our records and a reference script's table."""

import json
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

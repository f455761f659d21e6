"""notebooks/quickstart.ipynb, executed top to bottom on the CPU with the local CIFAR-10.

Needs the test-only packages of requirements-test.txt (nbclient, ipykernel); skipped
without them.
"""

import re
from pathlib import Path

import pytest

import hlb

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def _printed(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.fixture
def executed(cifar_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: the package from the checkout (no install),
    # the test data, and no GPU even where there is one, so the CPU branch is what runs.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HLB_DATA_DIR", str(cifar_dir))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("HLB_RUNS_DIR")                 # ./runs of the notebook's folder
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return [c for c in notebook.cells if c.cell_type == "code"], tmp_path


def test_the_quickstart_notebook_runs_on_the_cpu(executed):
    cells, folder = executed
    install, settings, train, evaluate, load, compare, plot, runs = cells
    assert f"hlb {hlb.__version__} from {ROOT / 'hlb'}" in _printed(install)
    assert _printed(settings).startswith("recipe smoke on cpu with train_images=1000")
    assert "|   run | epoch |" in _printed(train)
    assert "model saved to quickstart.safetensors" in _printed(train)
    # eval gives back exactly what the run reported.
    found = re.search(r"plain accuracy (\S+)\s+TTA accuracy (\S+)\n\s+the run reported: "
                      r"plain (\S+)\s+TTA (\S+) ", _printed(evaluate))
    assert found and found.group(1, 2) == found.group(3, 4), _printed(evaluate)
    guessed, truth = _printed(load).splitlines()
    assert truth == "truth:   cat ship ship airplane frog frog automobile frog"
    assert len(guessed.split()) == 9
    assert "accuracy B - A:" in _printed(compare)
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
    assert (folder / "quickstart.png").stat().st_size > 10_000
    assert len(_printed(runs).strip().splitlines()) >= 4     # header and three records
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)

"""The package's shape: the method (hlb/*.py) never reaches into the bench or the data loaders,
and no function or class grows past what one reads in a sitting."""

import ast
from pathlib import Path

import pytest

HLB = Path(__file__).resolve().parents[1] / "hlb"
# The Python API (hlb/__init__.py) joins the parts; errors and files serve all three.
SHARED = {"__init__.py", "errors.py", "files.py"}
METHOD = sorted(p for p in HLB.glob("*.py") if p.name not in SHARED)


def imported(path):
    """Every module name an import statement in `path` names."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_the_method_is_at_the_top_and_the_tooling_below():
    assert {p.stem for p in METHOD} >= {"recipes", "augment", "model", "optim", "step", "train",
                                        "evaluate"}
    assert (HLB / "data" / "__init__.py").is_file() and (HLB / "bench" / "cli.py").is_file()


@pytest.mark.parametrize("path", METHOD, ids=lambda p: p.name)
def test_the_method_never_imports_the_bench_or_the_data_loaders(path):
    reached = [n for n in imported(path) if n.startswith(("hlb.bench", "hlb.data"))
               or n in ("hlb.bench", "hlb.data")]
    assert reached == [], f"{path.name} imports {reached}"


def test_the_import_check_sees_an_import_of_the_bench(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\nfrom hlb.bench import stats\nfrom hlb.bench.runs import X\n")
    assert "hlb.bench.stats" in imported(planted) and "hlb.bench.runs" in imported(planted)


def sizes(path):
    """(kind, name, lines) of every function and class in `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            yield kind, node.name, node.end_lineno - node.lineno + 1


LIMITS = {"function": 60, "class": 150}


@pytest.mark.parametrize("path", sorted(HLB.rglob("*.py")), ids=lambda p: str(p.relative_to(HLB)))
def test_no_function_over_60_lines_and_no_class_over_150(path):
    too_long = [(kind, name, n) for kind, name, n in sizes(path) if n > LIMITS[kind]]
    assert too_long == []


def test_ci_runs_the_readmes_test_command_exactly():
    root = HLB.parent
    command = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    two_commands = (root / "README.md").read_text().split("## Two commands", 1)[1]
    assert f"\n    {command}\n" in two_commands.split("\n## ", 1)[0]
    assert "requirements-test.txt" in command and "pytest" in command


def _requirements(path):
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line.replace(" ", "") for line in lines if line]


def test_the_requirements_leave_an_installed_torch_alone():
    """requirements.txt states the lower bounds the code needs (pyproject.toml's), so a torch
    already installed that meets them, a CUDA build above all, stays; the exact versions the
    tests ran with are pinned for the tests only."""
    tomllib = pytest.importorskip("tomllib")       # Python 3.11 and later
    root = HLB.parent
    needed = _requirements(root / "requirements.txt")
    assert not [r for r in needed if "==" in r or "~=" in r], "an exact pin replaces a torch"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert sorted(needed) == sorted(d.replace(" ", "") for d in project["dependencies"])
    assert any(r.startswith("torch>=") for r in needed)
    assert "-cconstraints-test.txt" in _requirements(root / "requirements-test.txt")
    assert any(r.startswith("torch==") for r in _requirements(root / "constraints-test.txt"))

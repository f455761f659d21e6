"""The package: `pip install .` and `pip install -e .` in a new virtual environment give an
`hlb` command that works from any folder.

The new environment sees the packages of the one running the tests (torch is not installed
again) and pip builds with the setuptools already there (no download), so each install takes
seconds, not minutes.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import hlb

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _run(*args, cwd, timeout=120):
    # Without $HLB_RUNS_DIR and $HLB_DATA_DIR: the defaults, relative to `cwd`, are under test.
    env = {k: v for k, v in os.environ.items() if k not in ("HLB_RUNS_DIR", "HLB_DATA_DIR")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def _sh(*args, cwd):
    result = _run(*args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _outer_site_packages():
    """Where the running interpreter finds its packages: the test environment's own (a virtual
    environment's, when the tests run in one) and, if it sees them, the base interpreter's."""
    places = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if sys.flags.no_user_site == 0 and site.ENABLE_USER_SITE:
        places.append(site.getusersitepackages())
    places += site.getsitepackages()
    return list(dict.fromkeys(p for p in places if Path(p).is_dir()))


def _environment(tmp_path):
    """A new virtual environment that sees this interpreter's packages (pip and setuptools
    included). system_site_packages alone would show the base interpreter's, not those of
    the virtual environment the tests may run in, so a .pth file names them."""
    pytest.importorskip("setuptools")
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=False, with_pip=False)
    inner = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (inner / "outer.pth").write_text("\n".join(_outer_site_packages()) + "\n")
    return env / "bin" / "python", env / "bin" / "hlb"


def _source(tmp_path):
    """A copy of what the package is built from, so the build leaves nothing in the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "hlb", src / "hlb", ignore=shutil.ignore_patterns("__pycache__"))
    return src


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_gives_an_hlb_command(editable, tmp_path):
    python, command = _environment(tmp_path)
    src = _source(tmp_path)
    _sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
        *(["-e"] if editable else []), src, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = _sh(python, "-c", "import hlb, importlib.metadata as m; "
                "print(hlb.__file__); print(hlb.__version__, m.version('hlb-cifar10'))",
                cwd=elsewhere).split("\n")
    # The installed copy, not the checkout (editable: the source it was installed from).
    assert Path(where[0]).is_relative_to(src if editable else tmp_path / "venv")
    assert where[1] == f"{hlb.__version__} {hlb.__version__}"

    usage = _sh(command, "--help", cwd=elsewhere)
    assert "--save-model" in usage and "--recipe" in usage
    assert "PATH" in _sh(command, "eval", "--help", cwd=elsewhere)
    assert "no records in runs" in _sh(command, "runs", cwd=elsewhere)
    assert list(elsewhere.iterdir()) == []            # asking wrote nothing
    # `hlb runs` reads ./runs of the folder it runs in (an unreadable record gets a row).
    (elsewhere / "runs" / "one").mkdir(parents=True)
    (elsewhere / "runs" / "one" / "record.json").write_text("{")
    assert "one" in _sh(command, "runs", cwd=elsewhere)
    bad = _run(command, "--recipe", "93", cwd=elsewhere)
    assert bad.returncode == 2 and "unknown recipe '93'" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


def test_the_version_has_one_home():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "hlb.__version__"' in text
    assert "__version__ = " in (ROOT / "hlb" / "__init__.py").read_text()

"""hlb.bench.code: which code ran, as a record keeps it (a hash of the source, the commit, the
uncommitted edits and their diff)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from hlb.bench.code import DIFF_LIMIT, describe, identity, source_sha256
from hlb.bench.resume import same_code

ROOT = Path(__file__).resolve().parents[1]


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    """A git checkout holding a copy of main.py and the package, committed."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "main.py", root / "main.py")
    shutil.copytree(ROOT / "hlb", root / "hlb", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "README.md").write_text("docs\n")
    git("init", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "start", cwd=root)
    return root


def test_the_source_hash_follows_the_code_not_where_it_lies(checkout, tmp_path):
    assert source_sha256(checkout / "hlb") == source_sha256(ROOT / "hlb")
    copy = tmp_path / "elsewhere" / "hlb"
    shutil.copytree(checkout / "hlb", copy)
    assert source_sha256(copy) == source_sha256(ROOT / "hlb")
    with open(copy / "model.py", "a") as f:
        f.write("# one more line\n")
    assert source_sha256(copy) != source_sha256(ROOT / "hlb")
    (copy / "model.py").rename(copy / "model2.py")        # a file's name counts too
    assert source_sha256(copy) != source_sha256(checkout / "hlb")


def test_a_clean_checkout_names_its_commit_and_no_edits(checkout):
    code = identity(checkout / "hlb", checkout)
    assert len(code["git_commit"]) == 40 and code["dirty"] is False
    assert code["diff"] is None and code["diff_sha256"] is None
    assert describe(code).startswith(f"commit {code['git_commit'][:8]}, source ")


def test_uncommitted_edits_are_named_hashed_and_kept(checkout):
    clean = identity(checkout / "hlb", checkout)
    with open(checkout / "hlb" / "model.py", "a") as f:
        f.write("# an edit\n")
    (checkout / "hlb" / "extra.py").write_text("X = 1\n")          # untracked, in the package
    (checkout / "README.md").write_text("other docs\n")            # not code: not counted
    code = identity(checkout / "hlb", checkout)
    assert code["git_commit"] == clean["git_commit"] and code["dirty"] is True
    assert "+# an edit" in code["diff"] and "+X = 1" in code["diff"]
    assert "README" not in code["diff"] and len(code["diff_sha256"]) == 64
    assert code["source_sha256"] != clean["source_sha256"]
    assert "with uncommitted edits (diff " in describe(code)
    # The patch rebuilds the code: applied to the commit it gives the same source.
    patch = checkout.parent / "edits.patch"
    patch.write_text(code["diff"])
    git("stash", "-u", "-q", cwd=checkout)
    assert identity(checkout / "hlb", checkout)["source_sha256"] == clean["source_sha256"]
    git("apply", str(patch), cwd=checkout)
    assert identity(checkout / "hlb", checkout)["source_sha256"] == code["source_sha256"]


def test_a_large_diff_keeps_its_hash_alone(checkout):
    (checkout / "hlb" / "big.py").write_text("# x\n" * (DIFF_LIMIT // 4 + 10))
    code = identity(checkout / "hlb", checkout)
    assert code["dirty"] and code["diff"] is None and code["diff_sha256"]


def test_outside_git_only_the_source_hash_is_known(tmp_path):
    package = tmp_path / "site" / "hlb"
    shutil.copytree(ROOT / "hlb", package, ignore=shutil.ignore_patterns("__pycache__"))
    code = identity(package, package.parent)
    assert code["source_sha256"] == source_sha256(ROOT / "hlb")
    assert code["git_commit"] is None and code["dirty"] is None and code["diff"] is None


def test_a_record_of_edited_code_is_not_the_clean_trees(checkout):
    clean = identity(checkout / "hlb", checkout)
    with open(checkout / "hlb" / "train.py", "a") as f:
        f.write("# an edit\n")
    edited = identity(checkout / "hlb", checkout)
    record = {"environment": {"git_commit": edited["git_commit"], "code": edited}}
    # The same commit, but not the same code: today's rule (before it, only commits counted).
    assert edited["git_commit"] == clean["git_commit"]
    assert not same_code(record, clean) and same_code(record, edited)
    # A record that kept no source hash is judged by its commit, as before.
    old = {"environment": {"git_commit": clean["git_commit"]}}
    assert same_code(old, edited) and same_code(old, clean)

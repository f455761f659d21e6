"""hlb.files: a file is written whole or not at all, and no temporary outlives the write."""

import os
import stat

import pytest

from hlb.files import TMP_PREFIX, reason, remove, write_atomic


def test_write_atomic_writes_the_bytes_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "out.bin"
    write_atomic(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_write_atomic_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    write_atomic(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["error", "interrupt"])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    seen = []

    def half_then_fail(f):
        f.write(b"half of the new")
        f.flush()
        seen.extend(os.listdir(tmp_path))
        raise error

    with pytest.raises(type(error)):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    # The partial bytes went to a temporary beside the target, never into it.
    assert len(seen) == 2 and any(name.startswith(TMP_PREFIX) for name in seen)


def test_a_failed_first_write_leaves_nothing(tmp_path):
    def fail(f):
        raise ValueError("cannot encode")

    with pytest.raises(ValueError):
        write_atomic(tmp_path / "new.json", fail)
    assert os.listdir(tmp_path) == []


def test_write_atomic_honours_the_umask_not_mkstemp_private_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "shared.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.bin").stat().st_mode) == 0o644


def test_remove_takes_files_folders_and_what_is_already_gone(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "g").write_bytes(b"y")
    for name in ("f", "d", "never-there"):
        remove(tmp_path / name)
    remove(None)
    assert os.listdir(tmp_path) == []


def test_reason_is_one_line():
    assert reason(OSError("first\n  second")) == "first second"
    assert reason(KeyError()) == "KeyError"

"""hlb.data: verify, decode, download and cache CIFAR-10 (fake files, plus one real run)."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import hlb.data.decode as decode
import hlb.data as ds
from fakecifar import (
    FOLDER,
    LABEL_NAMES,
    concurrent_load_worker,
    fake_arrays,
    make_fake_tarball,
    md5,
    py2_pickle,
    write_fake_batches,
)
from hlb.data.cache import CACHE_NAME, LOCK_NAME
from hlb.errors import DataError
from hlb.files import TMP_PREFIX

REAL_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
N = 20  # images per fake batch
LOCK_ONLY = {LOCK_NAME}


def leftovers(d: Path) -> set[str]:
    return set(os.listdir(d)) if d.exists() else set()


def tensors(data: ds.Cifar10):
    return data.train_images, data.train_labels, data.test_images, data.test_labels


def assert_same(a: ds.Cifar10, b: ds.Cifar10) -> None:
    for x, y in zip(tensors(a), tensors(b)):
        assert torch.equal(x, y)
    assert a.classes == b.classes and a.fingerprint == b.fingerprint


def assert_matches_fake(data: ds.Cifar10, seed: int = 0) -> None:
    arrays = fake_arrays(N, seed)
    train = [arrays[f"data_batch_{i}"] for i in range(1, 6)]
    expect_train = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32)
    assert torch.equal(data.train_images, torch.from_numpy(expect_train))
    assert data.train_labels.tolist() == sum((lb for _, lb in train), [])
    test_data, test_labels = arrays["test_batch"]
    assert torch.equal(data.test_images, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)))
    assert data.test_labels.tolist() == test_labels


# ----------------------------------------------------------------------------- local server


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold a server thread forever

    def do_GET(self):  # noqa: N802 (http.server naming)
        srv = self.server
        with srv.lock:
            srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        if self.path not in srv.routes:
            self.send_error(404, "Not Found")
            return
        body, mode = srv.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "slow":
            time.sleep(0.5)  # widen the window in which a second process could race
        if mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # keep test output clean


class LocalServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.hits = {}, {}
        self.httpd.lock = threading.Lock()
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        self.httpd.routes[path] = (body, mode)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path: str) -> int:
        return self.httpd.hits.get(path, 0)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def fake_tar(tmp_path_factory):
    """(tarball bytes, tar md5, file md5s) for the fake dataset."""
    path = tmp_path_factory.mktemp("tarball") / "fake.tar.gz"
    tar_md5, md5s = make_fake_tarball(path, n_per_batch=N)
    return path.read_bytes(), tar_md5, md5s


# ----------------------------------------------------------------------------- basics


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("HLB_DATA_DIR", raising=False)
    assert ds.default_data_dir() == Path("data")
    monkeypatch.setenv("HLB_DATA_DIR", str(tmp_path / "elsewhere"))
    assert ds.default_data_dir() == tmp_path / "elsewhere"


def test_fake_files_load_with_right_shapes_dtypes_and_values(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    data = ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)
    assert data.train_images.shape == (5 * N, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (5 * N,) and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (N, 3, 32, 32) and data.test_images.dtype == torch.uint8
    assert data.test_labels.shape == (N,) and data.test_labels.dtype == torch.int64
    assert data.classes == tuple(LABEL_NAMES)
    assert len(data.fingerprint) == 16 and int(data.fingerprint, 16) >= 0
    assert_matches_fake(data)
    assert (tmp_path / CACHE_NAME).is_file()


def test_pixel_order_is_r_then_g_then_b_planes_row_major(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    data = ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)
    rows, _ = fake_arrays(N)["data_batch_2"]
    img = data.train_images[N + 3]  # image 3 of data_batch_2
    row = rows[3]
    for c, y, x in [(0, 0, 0), (0, 0, 31), (0, 1, 0), (1, 5, 7), (2, 31, 31), (2, 17, 4)]:
        assert img[c, y, x].item() == row[c * 1024 + y * 32 + x]


def test_fingerprint_depends_only_on_the_md5s(tmp_path):
    a = write_fake_batches(tmp_path / "a", n_per_batch=N, seed=1)
    b = write_fake_batches(tmp_path / "b", n_per_batch=N, seed=2)
    fa = ds.load_cifar10(tmp_path / "a", file_md5s=a, download=False, progress=False)
    fa2 = ds.load_cifar10(tmp_path / "a", file_md5s=a, download=False, progress=False)
    fb = ds.load_cifar10(tmp_path / "b", file_md5s=b, download=False, progress=False)
    assert fa.fingerprint == fa2.fingerprint != fb.fingerprint


# ----------------------------------------------------------------------------- verification


def test_flipped_byte_is_reported_with_the_file_name(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    path = tmp_path / FOLDER / "data_batch_3"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data_batch_3 fails its MD5 check") as e:
        ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / CACHE_NAME).exists()


def test_missing_batch_file_is_named(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    (tmp_path / FOLDER / "test_batch").unlink()
    with pytest.raises(DataError, match=r"test_batch is missing"):
        ds.load_cifar10(tmp_path, file_md5s=md5s, download=True, progress=False)


def test_missing_dir_without_download(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="download disabled") as e:
        ds.load_cifar10(missing, download=False, progress=False)
    assert str(missing) in str(e.value)
    assert not missing.exists()  # looking must not create anything


def test_empty_dir_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="looked for") as e:
        ds.load_cifar10(tmp_path, download=False, progress=False)
    assert str(tmp_path / FOLDER) in str(e.value)


def test_official_md5s_reject_fake_files(tmp_path):
    write_fake_batches(tmp_path, n_per_batch=N)
    with pytest.raises(DataError, match="data_batch_1 fails its MD5 check"):
        ds.load_cifar10(tmp_path, download=False, progress=False)


# ----------------------------------------------------------------------------- unpickling


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_SystemCall, _EvalCall], ids=["os.system", "eval"])
@pytest.mark.parametrize("nested", [False, True], ids=["top", "in-dict"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, nested):
    # Sanity: the payload really does create its marker under plain pickle.
    control = tmp_path / "control"
    pickle.loads(py2_pickle(payload(control)), encoding="bytes")
    assert control.exists()

    root, marker = tmp_path / "root", tmp_path / "pwned"
    md5s = write_fake_batches(root, n_per_batch=N)
    evil = payload(marker)
    obj = {b"data": evil, b"labels": [0] * N} if nested else evil
    raw = py2_pickle(obj)  # doctored in the official files' own pickle dialect
    (root / FOLDER / "data_batch_2").write_bytes(raw)
    md5s["data_batch_2"] = md5(raw)  # as if the attacker also supplied the checksums
    refused = r"refusing to unpickle (posix|os|nt|builtins|__builtin__)\."
    with pytest.raises(DataError, match=refused) as e:
        ds.load_cifar10(root, file_md5s=md5s, download=False, progress=False)
    assert "data_batch_2" in str(e.value) and "not a plain CIFAR-10 batch" in str(e.value)
    assert not marker.exists()


def _replace_file(root: Path, md5s: dict, name: str, obj) -> None:
    raw = py2_pickle(obj)
    (root / FOLDER / name).write_bytes(raw)
    md5s[name] = md5(raw)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({b"data": np.zeros((N, 100), np.uint8), b"labels": [0] * N}, "uint8"),
        ({b"data": np.zeros((N, 3072), np.float32), b"labels": [0] * N}, "uint8"),
        ({b"data": np.zeros((N, 3072), np.uint8), b"labels": [0] * (N - 1)}, "labels"),
        ({b"data": np.zeros((N, 3072), np.uint8), b"labels": [10] * N}, r"0\.\.9"),
        ({b"data": np.zeros((N, 3072), np.uint8), b"labels": [-1] * N}, r"0\.\.9"),
        ({b"data": np.zeros((N, 3072), np.uint8), b"labels": [b"x"] * N}, "labels"),
        ({b"labels": [0] * N}, "dict with data and labels"),
        ([1, 2, 3], "dict with data and labels"),
    ],
    ids=["cols", "dtype", "count", "high", "negative", "type", "no-data", "not-dict"],
)
def test_malformed_batches_are_data_errors(tmp_path, obj, match):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    _replace_file(tmp_path, md5s, "data_batch_4", obj)
    with pytest.raises(DataError, match=match) as e:
        ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)
    assert "data_batch_4" in str(e.value)


def test_bad_meta_and_garbage_bytes_are_data_errors(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    _replace_file(tmp_path, md5s, "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(DataError, match="batches.meta.*label_names"):
        ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)
    garbage = b"\x80\x02not a pickle at all"
    (tmp_path / FOLDER / "test_batch").write_bytes(garbage)
    md5s["test_batch"] = md5(garbage)
    with pytest.raises(DataError, match="cannot decode .*test_batch"):
        ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)


def test_different_batch_sizes_are_allowed(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, (N + 7, 3072), dtype=np.uint8)
    _replace_file(tmp_path, md5s, "data_batch_5", {b"data": big, b"labels": [9] * (N + 7)})
    data = ds.load_cifar10(tmp_path, file_md5s=md5s, download=False, progress=False)
    assert data.train_images.shape == (5 * N + 7, 3, 32, 32)
    assert torch.equal(data.train_images[4 * N:], torch.from_numpy(big.reshape(-1, 3, 32, 32)))
    assert data.train_labels[4 * N:].tolist() == [9] * (N + 7)


# ----------------------------------------------------------------------------- download


def test_download_then_cache(tmp_path, server, fake_tar, monkeypatch):
    body, tar_md5, md5s = fake_tar
    url = server.serve("/cifar.tar.gz", body)
    d = tmp_path / "new" / "dir"  # created on demand
    data = ds.load_cifar10(d, url=url, tar_md5=tar_md5, file_md5s=md5s, progress=False)
    assert_matches_fake(data)
    assert server.hits("/cifar.tar.gz") == 1
    assert leftovers(d) == {FOLDER, CACHE_NAME, LOCK_NAME}
    assert {"data_batch_1", "test_batch", "batches.meta"} <= set(os.listdir(d / FOLDER))

    # The second call must come from the cache: no download, no hashing of the batches.
    def no_hashing(*args):
        raise AssertionError("source files re-read on the fast path")

    monkeypatch.setattr(decode, "read_verified", no_hashing)
    again = ds.load_cifar10(d, url=url, tar_md5=tar_md5, file_md5s=md5s, progress=False)
    assert_same(data, again)
    assert server.hits("/cifar.tar.gz") == 1


def test_download_progress_without_tty_is_a_few_plain_lines(tmp_path, server, fake_tar,
                                                            capsys):
    body, tar_md5, md5s = fake_tar
    url = server.serve("/c.tar.gz", body)
    ds.load_cifar10(tmp_path, url=url, tar_md5=tar_md5, file_md5s=md5s, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert 2 <= len(lines) <= 6
    assert url in lines[0] and "100.0%" in lines[-1]


def test_download_progress_on_a_tty_redraws_in_place(tmp_path, server, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    body = os.urandom(3 << 20)  # several 1 MiB chunks; not a tarball, so it then fails
    url = server.serve("/big.tar.gz", body)
    fake_err = Tty()
    monkeypatch.setattr(sys, "stderr", fake_err)
    with pytest.raises(DataError, match="damaged"):
        ds.load_cifar10(tmp_path, url=url, tar_md5=md5(body), progress=True)
    err = fake_err.getvalue()
    assert "\r" in err and "100.0% of 3.1 MB" in err and err.endswith("\n")
    assert leftovers(tmp_path) <= LOCK_ONLY


def test_wrong_tar_md5_leaves_nothing(tmp_path, server, fake_tar):
    body, _, md5s = fake_tar
    url = server.serve("/c.tar.gz", body)
    with pytest.raises(DataError, match="MD5") as e:
        ds.load_cifar10(tmp_path, url=url, tar_md5="0" * 32, file_md5s=md5s, progress=False)
    assert url in str(e.value) and "--data-dir" in str(e.value)
    assert leftovers(tmp_path) <= LOCK_ONLY


def test_truncated_transfer_leaves_nothing(tmp_path, server, fake_tar):
    body, tar_md5, md5s = fake_tar
    url = server.serve("/c.tar.gz", body, mode="truncate")
    with pytest.raises(DataError, match="could not download") as e:
        ds.load_cifar10(tmp_path, url=url, tar_md5=tar_md5, file_md5s=md5s, progress=False)
    assert url in str(e.value)
    assert leftovers(tmp_path) <= LOCK_ONLY


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_tarball_with_matching_md5_leaves_nothing(tmp_path, server, fake_tar, how):
    body, _, md5s = fake_tar
    if how == "truncated":
        cut = body[: len(body) * 2 // 3]
    else:  # a flipped byte inside the gzip stream: caught by inflate or gzip's CRC
        raw = bytearray(body)
        raw[len(raw) // 2] ^= 0x40
        cut = bytes(raw)
    url = server.serve("/c.tar.gz", cut)
    # Truncation breaks the gzip/tar stream; a flip shows up there or in a member's MD5.
    expect = "damaged" if how == "truncated" else "damaged|fails its MD5 check|lacks"
    with pytest.raises(DataError, match=expect) as e:
        ds.load_cifar10(tmp_path, url=url, tar_md5=md5(cut), file_md5s=md5s, progress=False)
    assert url in str(e.value)
    assert leftovers(tmp_path) <= LOCK_ONLY


def test_tarball_with_wrong_member_md5_leaves_nothing(tmp_path, server, fake_tar):
    body, tar_md5, md5s = fake_tar
    url = server.serve("/c.tar.gz", body)
    md5s = dict(md5s, data_batch_5="f" * 32)
    with pytest.raises(DataError, match="data_batch_5 .*MD5"):
        ds.load_cifar10(tmp_path, url=url, tar_md5=tar_md5, file_md5s=md5s, progress=False)
    assert leftovers(tmp_path) <= LOCK_ONLY


def test_http_404_names_the_url(tmp_path, server):
    url = server.url("/missing.tar.gz")
    with pytest.raises(DataError, match="404") as e:
        ds.load_cifar10(tmp_path, url=url, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"could not download {url}") and str(tmp_path) in msg
    assert leftovers(tmp_path) <= LOCK_ONLY


def test_connection_refused_names_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/c.tar.gz"
    with pytest.raises(DataError, match="could not download") as e:
        ds.load_cifar10(tmp_path, url=url, progress=False)
    assert url in str(e.value)
    assert leftovers(tmp_path) <= LOCK_ONLY


def test_keyboard_interrupt_cleans_up_and_propagates(tmp_path, monkeypatch):
    class Response:
        headers = {"Content-Length": str(10 * 1024)}
        reads = 0

        def read(self, n):
            Response.reads += 1
            if Response.reads > 2:
                raise KeyboardInterrupt
            return b"x" * 1024

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response())
    with pytest.raises(KeyboardInterrupt):
        ds.load_cifar10(tmp_path, url="http://example.invalid/c.tar.gz", progress=False)
    assert Response.reads == 3
    assert leftovers(tmp_path) <= LOCK_ONLY


def _evil_tarball(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if kind == "symlink":
            info = tarfile.TarInfo(f"{FOLDER}/data_batch_1")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            name = {"dotdot": f"{FOLDER}/../../evil", "absolute": "/tmp/hlb-evil-abs"}[kind]
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_tar_members_are_rejected(tmp_path, server, kind):
    body = _evil_tarball(kind)
    url = server.serve("/evil.tar.gz", body)
    d = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="unsafe member"):
        ds.load_cifar10(d, url=url, tar_md5=md5(body), progress=False)
    assert leftovers(d) <= LOCK_ONLY
    assert not (tmp_path / "evil").exists() and not (tmp_path / "a" / "evil").exists()


# ----------------------------------------------------------------------------- cache


def _load(d: Path, md5s: dict) -> ds.Cifar10:
    return ds.load_cifar10(d, file_md5s=md5s, download=False, progress=False)


def _overwrite_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(raw))


def _garbage(path: Path) -> None:
    path.write_bytes(b"definitely not a torch file")


def _tampered_pixel(path: Path) -> None:
    # Well-formed file, right format/fingerprint, only one pixel changed: the checksum
    # is the only thing that can catch it.
    blob = torch.load(path, weights_only=True)
    blob["train_images"][0, 0, 0, 0] ^= 0xFF
    torch.save(blob, path)


@pytest.mark.parametrize("damage", [_overwrite_middle, _garbage, _tampered_pixel])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, capsys, damage):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    first = _load(tmp_path, md5s)
    capsys.readouterr()
    cache = tmp_path / CACHE_NAME
    stat = cache.stat()
    damage(cache)
    again = _load(tmp_path, md5s)
    assert_same(first, again)
    err = capsys.readouterr().err
    assert "rebuilt" in err and len(err.strip().splitlines()) == 1
    assert_same(first, _load(tmp_path, md5s))  # and the rebuilt cache is good and quiet
    assert capsys.readouterr().err == ""
    assert cache.stat().st_ino != stat.st_ino or cache.stat().st_mtime_ns != stat.st_mtime_ns


def test_touched_source_file_triggers_reverification(tmp_path, monkeypatch, capsys):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    first = _load(tmp_path, md5s)
    calls = []
    real = decode.read_verified
    monkeypatch.setattr(decode, "read_verified", lambda p, m: calls.append(p) or real(p, m))
    _load(tmp_path, md5s)
    assert calls == []  # unchanged sizes+mtimes: no re-hash
    path = tmp_path / FOLDER / "data_batch_1"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert_same(first, _load(tmp_path, md5s))
    assert len(calls) == 7
    assert "rebuilt" in capsys.readouterr().err


def test_cache_for_other_source_files_is_not_used(tmp_path):
    md5s_a = write_fake_batches(tmp_path, n_per_batch=N, seed=1)
    a = _load(tmp_path, md5s_a)
    md5s_b = write_fake_batches(tmp_path, n_per_batch=N, seed=2)
    b = _load(tmp_path, md5s_b)
    assert a.fingerprint != b.fingerprint
    assert not torch.equal(a.train_images, b.train_images)
    assert_matches_fake(b, seed=2)


def test_cache_alone_suffices_once_the_folder_is_deleted(tmp_path, monkeypatch):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    first = _load(tmp_path, md5s)
    for p in (tmp_path / FOLDER).iterdir():
        p.unlink()
    (tmp_path / FOLDER).rmdir()
    assert_same(first, _load(tmp_path, md5s))
    # ... but a corrupt cache with no source folder is an error, not a silent pass.
    _garbage(tmp_path / CACHE_NAME)
    with pytest.raises(DataError, match="download disabled"):
        _load(tmp_path, md5s)


def test_cache_write_failure_still_returns_the_data(tmp_path, monkeypatch, capsys):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")  # a half-written temp file must not survive
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    data = _load(tmp_path, md5s)
    assert_matches_fake(data)
    err = capsys.readouterr().err
    assert "could not write cache" in err and "No space left" in err
    assert len(err.strip().splitlines()) == 1
    assert leftovers(tmp_path) == {FOLDER, LOCK_NAME}


def test_temp_files_of_a_killed_run_are_swept(tmp_path):
    md5s = write_fake_batches(tmp_path, n_per_batch=N)
    (tmp_path / (TMP_PREFIX + "x.tar.gz")).write_bytes(b"half a download")
    (tmp_path / (TMP_PREFIX + "dir") / FOLDER).mkdir(parents=True)
    _load(tmp_path, md5s)
    assert leftovers(tmp_path) == {FOLDER, CACHE_NAME, LOCK_NAME}


def test_two_processes_on_one_fresh_dir(tmp_path, server, fake_tar):
    body, tar_md5, md5s = fake_tar
    url = server.serve("/c.tar.gz", body, mode="slow")
    d = tmp_path / "shared"
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=concurrent_load_worker,
                    args=(barrier, queue, str(d), url, tar_md5, md5s))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]
    assert server.hits("/c.tar.gz") == 1  # the lock made the second one wait, not refetch
    expect = _load(d, md5s)
    h = hashlib.sha256()
    for t in tensors(expect):
        h.update(t.numpy().tobytes())
    assert results[0][1] == h.hexdigest()
    assert leftovers(d) == {FOLDER, CACHE_NAME, LOCK_NAME}


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def real_cifar_dir(request, tmp_path_factory):
    """A dir holding the byte-exact official cifar-10-batches-py/, built once a session."""
    try:  # reuse conftest's copy when it has one: materializing costs ~15 s
        return request.getfixturevalue("cifar_dir")
    except pytest.FixtureLookupError:
        pass
    script = REAL_SRC / "materialize.py"
    if not script.is_file():
        pytest.skip(f"real CIFAR-10 not available: {REAL_SRC} is absent")
    out = tmp_path_factory.mktemp("real_cifar10")
    proc = subprocess.run([sys.executable, str(script), str(out)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"materialize.py failed: {proc.stderr.strip()[-500:]}")
    return out


def test_real_cifar10(real_cifar_dir):
    data = ds.load_cifar10(real_cifar_dir, download=False, progress=False)
    assert data.train_images.shape == (50000, 3, 32, 32)
    assert data.train_labels.shape == (50000,)
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert data.test_labels.shape == (10000,)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert data.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.classes == tuple(LABEL_NAMES)
    counts = torch.bincount(data.train_labels, minlength=10)
    assert counts.tolist() == [5000] * 10
    sums = data.train_images.sum(dim=(0, 2, 3), dtype=torch.int64).double()
    mean = (sums / (50000 * 32 * 32)).tolist()
    assert mean == pytest.approx([125.31, 122.95, 113.87], abs=0.01)

    t0 = time.perf_counter()
    cached = ds.load_cifar10(real_cifar_dir, download=False, progress=False)
    elapsed = time.perf_counter() - t0
    assert_same(data, cached)
    print(f"real CIFAR-10 cached load: {elapsed:.2f} s")

"""Small fake CIFAR-10 files, laid out and pickled like the official Python-2 ones."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Writes strings the way Python 2 did (BINSTRING, loaded back as bytes with
    encoding="bytes") and names numpy's globals as the official files do, so the
    fakes exercise the same unpickling path as the real batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string

    def save_global(self, obj, name=None):
        official = {
            id(np.ndarray(0).__reduce__()[0]): "numpy.core.multiarray\n_reconstruct\n",
            id(np.ndarray): "numpy\nndarray\n",
            id(np.dtype): "numpy\ndtype\n",
        }
        text = official.get(id(obj))
        if text is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + text.encode())
        self.memoize(obj)



def py2_pickle(obj) -> bytes:
    """Pickle obj as Python 2's cPickle (protocol 2) would have."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_arrays(n_per_batch: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    """Deterministic (data (n, 3072) uint8, labels list) for each of the 6 batches."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in (*TRAIN_FILES, "test_batch"):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=n_per_batch)]
        out[name] = (data, labels)
    return out


def fake_file_bytes(n_per_batch: int = 20, seed: int = 0) -> dict[str, bytes]:
    """The bytes of all 7 files, keyed by file name."""
    files = {}
    for i, (name, (data, labels)) in enumerate(fake_arrays(n_per_batch, seed).items()):
        batch_label = f"training batch {i + 1} of 5" if name != "test_batch" \
            else "testing batch 1 of 1"
        files[name] = py2_pickle({
            b"batch_label": batch_label.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"fake_{name}_{j}.png".encode() for j in range(len(labels))],
        })
    files["batches.meta"] = py2_pickle({
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [n.encode() for n in LABEL_NAMES],
        b"num_vis": 3072,
    })
    return files


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def write_fake_batches(root: Path, n_per_batch: int = 20, seed: int = 0) -> dict[str, str]:
    """Write root/cifar-10-batches-py/ with 7 fake files; returns their MD5s."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, raw in fake_file_bytes(n_per_batch, seed).items():
        (folder / name).write_bytes(raw)
        md5s[name] = md5(raw)
    return md5s


def make_fake_tarball(path: Path, n_per_batch: int = 20, seed: int = 0
                      ) -> tuple[str, dict[str, str]]:
    """Write a .tar.gz laid out like the official one; returns (tar MD5, file MD5s)."""
    files = fake_file_bytes(n_per_batch, seed)
    files["readme.html"] = b"<html>fake</html>\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, raw in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    Path(path).write_bytes(buf.getvalue())
    md5s = {name: md5(raw) for name, raw in files.items() if name != "readme.html"}
    return md5(buf.getvalue()), md5s


def concurrent_load_worker(barrier, queue, data_dir, url, tar_md5, file_md5s) -> None:
    """Child-process body for the concurrency test (top level, so spawn can import it):
    start together, load, report a digest of the data or the error."""
    try:
        from hlb.data import load_cifar10

        barrier.wait(timeout=60)
        data = load_cifar10(data_dir, url=url, tar_md5=tar_md5, file_md5s=file_md5s,
                            progress=False)
        h = hashlib.sha256()
        for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
            h.update(t.numpy().tobytes())
        queue.put(("ok", h.hexdigest(), data.fingerprint))
    except BaseException as e:  # report everything: the parent asserts on it
        queue.put(("error", f"{type(e).__name__}: {e}", ""))

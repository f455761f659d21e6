"""The decoded CIFAR-10 cache, and the lock that lets one process build it while others wait.

The cache is a torch file of plain tensors, read with weights_only=True, carrying the
fingerprint of the files it came from, their sizes and mtimes, and a SHA-256 of its
contents. It is only ever replaced whole, so reading it needs no lock.
"""

import hashlib
import os
import sys
from contextlib import contextmanager

import torch

from hlb.data.decode import FOLDER, NUM_CLASSES, SOURCE_FILES, Cifar10
from hlb.files import TMP_PREFIX, reason, remove, write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: run without the lock
    fcntl = None

CACHE_NAME = "cifar10_uint8.pt"
CACHE_FORMAT = "hlb-cifar10-uint8-v1"
LOCK_NAME = ".hlb.lock"


def source_signature(src):
    """Sizes and mtimes of the source files: a cheap check that they are the ones verified."""
    parts = []
    for name in SOURCE_FILES:
        try:
            st = (src / name).stat()
        except OSError:
            return None
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def load_cache(data_dir, fingerprint):
    """(data, None) if the cache is valid and current, else (None, why it cannot be used);
    why is None when there is no cache at all."""
    path = data_dir / CACHE_NAME
    if not path.is_file():
        return None, None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any load failure just means "rebuild"; the reason is shown
        return None, f"was unreadable ({reason(e)})"
    return _check_cache(blob, data_dir, fingerprint)


def _check_cache(blob, data_dir, fingerprint):
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
        return None, "had an unknown format"
    if blob.get("fingerprint") != fingerprint:
        return None, "was built from other source files"
    # If the source folder is present it must be the one verified; if it was deleted,
    # the fingerprint and the checksum below vouch for the cache on their own.
    src = data_dir / FOLDER
    if src.exists() and blob.get("source_stat") != source_signature(src):
        return None, "was stale (the source files changed since)"
    try:
        data = Cifar10(blob["train_images"], blob["train_labels"], blob["test_images"],
                       blob["test_labels"], tuple(blob["classes"]), fingerprint)
        _check_tensors(data)
    except (KeyError, TypeError, ValueError) as e:
        return None, f"was malformed ({reason(e)})"
    if blob.get("sha256") != _content_sha256(data):
        return None, "failed its checksum (corrupt)"
    return data, None


def _check_tensors(data):
    for images, labels in ((data.train_images, data.train_labels),
                           (data.test_images, data.test_labels)):
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
            raise TypeError("entries are not tensors")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"bad images {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"bad labels {labels.dtype} {tuple(labels.shape)}")
    if len(data.classes) != NUM_CLASSES or not all(isinstance(c, str) for c in data.classes):
        raise ValueError("bad class names")


def _content_sha256(data):
    h = hashlib.sha256()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(memoryview(t.contiguous().numpy()).cast("B"))
    h.update("\n".join(data.classes).encode())
    return h.hexdigest()


def write_cache(data_dir, data, signature):
    """Write the cache; return whether it worked. Without it a run is only slower, so a
    failure is a warning."""
    path = data_dir / CACHE_NAME
    blob = {
        "format": CACHE_FORMAT,
        "fingerprint": data.fingerprint,
        "source_stat": signature or "",
        "classes": list(data.classes),
        "train_images": data.train_images,
        "train_labels": data.train_labels,
        "test_images": data.test_images,
        "test_labels": data.test_labels,
        "sha256": _content_sha256(data),
    }
    try:
        write_atomic(path, lambda f: torch.save(blob, f))
        return True
    except (OSError, RuntimeError) as e:  # torch reports some write failures as RuntimeError
        print(f"hlb: warning: could not write cache {path} ({reason(e)}); continuing "
              "without it", file=sys.stderr, flush=True)
        return False


@contextmanager
def locked(data_dir, progress):
    """Hold an exclusive flock on data_dir/.hlb.lock. Where locking is impossible (no fcntl,
    a read-only dir, a filesystem without flock) carry on unlocked: renames still keep
    readers safe."""
    fd = _lock(data_dir, progress)
    try:
        if fd is not None:
            _remove_stale_temps(data_dir)  # left by a killed run; safe while we hold the lock
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def _lock(data_dir, progress):
    """The descriptor of the locked lock file, or None when there is no lock to be had."""
    if fcntl is None:
        return None
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"hlb: waiting for another process preparing CIFAR-10 in {data_dir}",
                      file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a filesystem without flock
        os.close(fd)
        return None
    except BaseException:  # interrupted while waiting
        os.close(fd)
        raise
    return fd


def _remove_stale_temps(data_dir):
    for p in data_dir.glob(TMP_PREFIX + "*"):
        remove(p)

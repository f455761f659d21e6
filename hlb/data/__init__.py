"""CIFAR-10 from disk as uint8 tensors: downloaded, verified, decoded and cached as needed.

Layout inside a data dir:
    cifar-10-batches-py/   the official python-version batch files (MD5-checked)
    cifar10_uint8.pt       decoded tensors, checksummed, keyed on the files' fingerprint
    .hlb.lock              advisory lock, so concurrent runs prepare the data only once

The jobs live beside this file: hlb.data.fetch downloads, hlb.data.decode verifies and
decodes, hlb.data.cache keeps the cache and the lock. Every problem the user can fix is a
one-line DataError.
"""

import hashlib
import os
import sys
from pathlib import Path

from hlb.data.cache import CACHE_NAME, load_cache, locked, source_signature, write_cache
from hlb.data.decode import FOLDER, SOURCE_FILES, Cifar10, read_batches
from hlb.data.fetch import HINT, download_cifar10
from hlb.errors import DataError
from hlb.files import reason

__all__ = ["CIFAR10_URL", "CIFAR10_TAR_MD5", "BATCH_MD5S", "Cifar10", "default_data_dir",
           "load_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5S = {  # the official python-version files, the values torchvision checks
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def default_data_dir():
    """$HLB_DATA_DIR if set, else ./data."""
    return Path(os.environ.get("HLB_DATA_DIR") or "data")


def load_cifar10(data_dir, *, url=CIFAR10_URL, tar_md5=CIFAR10_TAR_MD5, file_md5s=BATCH_MD5S,
                 download=True, progress=True):
    """CIFAR-10 from data_dir (None: default_data_dir()), downloaded and cached as needed.

    Raises DataError for anything the user can fix: missing, corrupt or unsafe files, or a
    failed download.
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    md5s = _md5s_of_source_files(file_md5s)
    fingerprint = _fingerprint(md5s)
    data, _ = load_cache(data_dir, fingerprint)  # no lock needed: the cache is replaced whole
    if data is not None:
        return data
    _make_dir(data_dir, download)
    with locked(data_dir, progress):
        # Another process may have built the cache while this one waited for the lock.
        data, why_stale = load_cache(data_dir, fingerprint)
        if data is not None:
            return data
        src = data_dir / FOLDER
        if not src.is_dir():
            if not download:
                raise _not_found(data_dir, f"looked for {src}/ and {data_dir / CACHE_NAME}")
            download_cifar10(data_dir, url, tar_md5, md5s, progress)
        signature = source_signature(src)  # before hashing: a change meanwhile looks stale
        data = read_batches(src, md5s, fingerprint)
        if write_cache(data_dir, data, signature) and why_stale:
            print(f"hlb: cache {data_dir / CACHE_NAME} {why_stale}; rebuilt it",
                  file=sys.stderr, flush=True)
        return data


def _md5s_of_source_files(file_md5s):
    missing = [name for name in SOURCE_FILES if name not in file_md5s]
    if missing:
        raise ValueError(f"file_md5s lacks entries for {', '.join(missing)}")
    return {name: file_md5s[name].lower() for name in SOURCE_FILES}


def _fingerprint(md5s):
    """A short id of the source files: what the cache and the run records are keyed on."""
    lines = "".join(f"{name}={md5s[name]}\n" for name in sorted(md5s))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _make_dir(data_dir, download):
    if not data_dir.is_dir() and not download:
        raise _not_found(data_dir, "the folder does not exist")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data dir {data_dir} ({reason(e)}); pass --data-dir")


def _not_found(data_dir, what):
    hint = HINT.format(dir=data_dir)
    return DataError(f"no CIFAR-10 in {data_dir}: {what} (download disabled); {hint}")

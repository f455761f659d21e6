"""CIFAR-10 from disk: download, verify, decode and cache as uint8 tensors.

Layout inside a data dir:
    cifar-10-batches-py/   the official python-version batch files (MD5-checked)
    cifar10_uint8.pt       decoded tensors, checksummed, keyed on the files' fingerprint
    .hlb.lock              advisory lock so concurrent runs prepare the data only once

Every file is written elsewhere first and renamed into place, so a reader never sees
half-written data, and every user-side problem surfaces as a one-line DataError.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import os
import pickle
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Mapping

import numpy as np
import torch

from hlb.errors import DataError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: run without the lock
    fcntl = None

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5S = {  # official python-version files, the values torchvision checks
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
SOURCE_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
CACHE_NAME = "cifar10_uint8.pt"
CACHE_FORMAT = "hlb-cifar10-uint8-v1"
LOCK_NAME = ".hlb.lock"
TMP_PREFIX = ".hlb-tmp-"  # every temp file/dir we create starts with this
HINT = "put the official cifar-10-batches-py/ folder in {dir} or pass --data-dir"

_CHUNK = 1 << 20
_PIXELS = 3 * 32 * 32
_NUM_CLASSES = 10
_DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Cifar10:
    train_images: torch.Tensor  # uint8, (50000, 3, 32, 32), NCHW, official order
    train_labels: torch.Tensor  # int64, (50000,)
    test_images: torch.Tensor  # uint8, (10000, 3, 32, 32)
    test_labels: torch.Tensor  # int64, (10000,)
    classes: tuple[str, ...]  # from batches.meta label_names
    fingerprint: str  # short hex id of the verified source files (sha256 over their md5s)


def default_data_dir() -> Path:
    """$HLB_DATA_DIR if set, else ./data."""
    return Path(os.environ.get("HLB_DATA_DIR") or "data")


def load_cifar10(
    data_dir: str | os.PathLike | None,
    *,
    url: str = CIFAR10_URL,
    tar_md5: str = CIFAR10_TAR_MD5,
    file_md5s: Mapping[str, str] = BATCH_MD5S,
    download: bool = True,
    progress: bool = True,
) -> Cifar10:
    """Return CIFAR-10 from data_dir, downloading and caching it as needed.

    Raises DataError for anything the user can fix (missing, corrupt or unsafe files,
    failed download). None for data_dir means default_data_dir().
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    missing = [name for name in SOURCE_FILES if name not in file_md5s]
    if missing:
        raise ValueError(f"file_md5s lacks entries for {', '.join(missing)}")
    md5s = {name: file_md5s[name].lower() for name in SOURCE_FILES}
    fingerprint = _fingerprint(md5s)

    # Lock-free fast path: the cache is only ever replaced whole, so reading is safe.
    data, _ = _load_cache(data_dir, fingerprint)
    if data is not None:
        return data
    if not data_dir.is_dir() and not download:
        raise DataError(
            f"no CIFAR-10 in {data_dir}: the folder does not exist (download disabled); "
            + HINT.format(dir=data_dir)
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data dir {data_dir} ({_reason(e)}); pass --data-dir")

    with _locked(data_dir, progress):
        # Another process may have finished the work while we waited for the lock.
        data, why_stale = _load_cache(data_dir, fingerprint)
        if data is not None:
            return data
        src = data_dir / FOLDER
        if not src.is_dir():
            if not download:
                raise DataError(
                    f"no CIFAR-10 in {data_dir}: looked for {src}/ and {data_dir / CACHE_NAME}"
                    f" (download disabled); " + HINT.format(dir=data_dir)
                )
            _download(data_dir, url, tar_md5, md5s, progress)
        data, stat_sig = _read_source(src, md5s, fingerprint)
        if _write_cache(data_dir, data, stat_sig) and why_stale:
            _say(f"hlb: cache {data_dir / CACHE_NAME} {why_stale}; rebuilt it")
        return data


# ----------------------------------------------------------------------------- cache


def _fingerprint(md5s: Mapping[str, str]) -> str:
    lines = "".join(f"{name}={md5s[name]}\n" for name in sorted(md5s))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _stat_signature(src: Path) -> str | None:
    """Sizes+mtimes of the source files: a cheap 'unchanged since verified' check."""
    parts = []
    for name in SOURCE_FILES:
        try:
            st = (src / name).stat()
        except OSError:
            return None
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def _content_sha256(data: Cifar10) -> str:
    h = hashlib.sha256()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(memoryview(t.contiguous().numpy()).cast("B"))
    h.update("\n".join(data.classes).encode())
    return h.hexdigest()


def _load_cache(data_dir: Path, fingerprint: str) -> tuple[Cifar10 | None, str | None]:
    """(cached tensors, None) if valid and current, else (None, why it cannot be used);
    why is None when there is no cache at all."""
    path = data_dir / CACHE_NAME
    if not path.is_file():
        return None, None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any load failure just means "rebuild"; the reason is shown
        return None, f"was unreadable ({_reason(e)})"
    return _check_cache(blob, data_dir, fingerprint)


def _check_cache(blob, data_dir: Path, fingerprint: str) -> tuple[Cifar10 | None, str | None]:
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
        return None, "had an unknown format"
    if blob.get("fingerprint") != fingerprint:
        return None, "was built from other source files"
    # If the source folder is present it must be the one verified; if it was deleted,
    # the fingerprint and the checksum below vouch for the cache on their own.
    src = data_dir / FOLDER
    if src.exists() and blob.get("source_stat") != _stat_signature(src):
        return None, "was stale (the source files changed since)"
    try:
        data = Cifar10(
            train_images=blob["train_images"],
            train_labels=blob["train_labels"],
            test_images=blob["test_images"],
            test_labels=blob["test_labels"],
            classes=tuple(blob["classes"]),
            fingerprint=fingerprint,
        )
        _check_tensors(data)
    except (KeyError, TypeError, ValueError) as e:
        return None, f"was malformed ({_reason(e)})"
    if blob.get("sha256") != _content_sha256(data):
        return None, "failed its checksum (corrupt)"
    return data, None


def _check_tensors(data: Cifar10) -> None:
    for images, labels in (
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ):
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
            raise TypeError("entries are not tensors")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"bad images {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"bad labels {labels.dtype} {tuple(labels.shape)}")
    if len(data.classes) != _NUM_CLASSES or not all(isinstance(c, str) for c in data.classes):
        raise ValueError("bad class names")


def _write_cache(data_dir: Path, data: Cifar10, stat_sig: str | None) -> bool:
    """Atomically write the cache; failing to write it only costs speed, so warn."""
    path = data_dir / CACHE_NAME
    blob = {
        "format": CACHE_FORMAT,
        "fingerprint": data.fingerprint,
        "source_stat": stat_sig or "",
        "classes": list(data.classes),
        "train_images": data.train_images,
        "train_labels": data.train_labels,
        "test_images": data.test_images,
        "test_labels": data.test_labels,
        "sha256": _content_sha256(data),
    }
    tmp = None
    try:
        # Not mkstemp: its 0600 mode would make a shared data dir's cache private.
        tmp = data_dir / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.pt"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        return True
    except (OSError, RuntimeError) as e:  # torch reports some write failures as RuntimeError
        _say(f"hlb: warning: could not write cache {path} ({_reason(e)}); continuing without it")
        return False
    finally:
        _remove(tmp)


# ----------------------------------------------------------------------------- decode


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
    # The exact function numpy pickles arrays with, whichever module it lives in.
    reconstruct = np.ndarray(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what rebuilding a numpy array needs, so a doctored batch file cannot
    run code (plain pickle would call anything the file names)."""

    def __init__(self, file: BinaryIO, source: Path):
        super().__init__(file, encoding="bytes")  # the files were pickled by Python 2
        self._source = source

    def find_class(self, module: str, name: str):
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._source}: "
                "not a plain CIFAR-10 batch"
            )
        return obj

    def persistent_load(self, pid):
        raise DataError(f"refusing persistent id in {self._source}: not a plain CIFAR-10 batch")


def _unpickle(raw: bytes, path: Path):
    try:
        return _BatchUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as e:  # garbage bytes can raise almost anything inside pickle
        raise DataError(
            f"cannot decode {path} ({_reason(e)}); delete the folder to re-download"
        ) from None


def _read_verified(path: Path, md5: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({_reason(e)})") from None
    if hashlib.md5(raw, usedforsecurity=False).hexdigest() != md5:
        raise DataError(
            f"{path} fails its MD5 check (corrupt or modified); delete the folder to "
            "re-download, or supply the official files with --data-dir"
        )
    return raw


def _decode_batch(obj, path: Path) -> tuple[np.ndarray, np.ndarray]:
    bad = f"{path} is not a CIFAR-10 batch"
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(f"{bad}: expected a dict with data and labels")
    data, labels = obj[b"data"], obj[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[0] > 0 and data.shape[1] == _PIXELS):
        shape = getattr(data, "shape", None)
        raise DataError(f"{bad}: data must be uint8 (N, {_PIXELS}), got {shape}")
    try:
        labels = np.asarray(labels)
    except Exception:  # ragged or odd objects
        raise DataError(f"{bad}: labels are not a list of ints") from None
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataError(f"{bad}: need {data.shape[0]} integer labels, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
        raise DataError(f"{bad}: labels must be in 0..{_NUM_CLASSES - 1}")
    images = data.reshape(-1, 3, 32, 32)  # each row is the R plane, then G, then B
    return images, labels.astype(np.int64)


def _decode_meta(obj, path: Path) -> tuple[str, ...]:
    names = obj.get(b"label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != _NUM_CLASSES:
        raise DataError(f"{path} is not CIFAR-10 metadata: need {_NUM_CLASSES} label_names")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError:
        raise DataError(f"{path} has label_names that are not text") from None


def _read_source(src: Path, md5s: Mapping[str, str], fingerprint: str):
    """Verify and decode the 7 files; returns (data, stat signature taken beforehand)."""
    for name in SOURCE_FILES:
        if not (src / name).is_file():
            raise DataError(
                f"{src / name} is missing; delete the folder to re-download, "
                "or supply the official files with --data-dir"
            )
    # Taken before hashing, so a file changed mid-way makes the cache look stale.
    stat_sig = _stat_signature(src)
    parts = {}
    for name in SOURCE_FILES:
        path = src / name
        obj = _unpickle(_read_verified(path, md5s[name]), path)
        parts[name] = _decode_meta(obj, path) if name == META_FILE else _decode_batch(obj, path)
    train = [parts[name] for name in TRAIN_FILES]
    test_images, test_labels = parts[TEST_FILE]
    data = Cifar10(
        train_images=torch.from_numpy(np.concatenate([im for im, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([lb for _, lb in train])),
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(test_labels),
        classes=parts[META_FILE],
        fingerprint=fingerprint,
    )
    return data, stat_sig


# ----------------------------------------------------------------------------- download


def _download(data_dir: Path, url: str, tar_md5: str, md5s: Mapping[str, str],
              progress: bool) -> None:
    """Fetch, check and unpack the tarball; on any failure nothing is left behind."""
    hint = HINT.format(dir=data_dir)
    tmp_tar = tmp_dir = None
    try:
        fd, tmp_tar = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tar.gz", dir=data_dir)
        with os.fdopen(fd, "wb") as f:
            got = _fetch(url, f, progress)
        if got != tar_md5.lower():
            raise DataError(
                f"could not download {url} (MD5 {got} != expected {tar_md5}: truncated or "
                f"tampered download); {hint}"
            )
        tmp_dir = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=data_dir)
        _extract(Path(tmp_tar), Path(tmp_dir), url, md5s, hint)
        os.replace(Path(tmp_dir) / FOLDER, data_dir / FOLDER)
    except DataError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        # URLError/HTTPError/timeouts are OSErrors; ValueError is a malformed URL
        raise DataError(f"could not download {url} ({_reason(e)}); {hint}") from None
    finally:  # also runs on KeyboardInterrupt, which then propagates unchanged
        _remove(tmp_tar)
        _remove(tmp_dir)


def _fetch(url: str, out: BinaryIO, progress: bool) -> str:
    """Stream url into out, returning the MD5 of what arrived."""
    md5 = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
        total = _content_length(resp)
        bar = _Progress(url, total) if progress else None
        done = 0
        while chunk := resp.read(_CHUNK):
            out.write(chunk)
            md5.update(chunk)
            done += len(chunk)
            if bar:
                bar.update(done)
        if bar:
            bar.finish(done)
    if total is not None and done != total:
        raise OSError(f"truncated download: got {done} of {total} bytes")
    return md5.hexdigest()


def _content_length(resp) -> int | None:
    try:
        n = int(resp.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


class _Progress:
    """Download progress on stderr: redrawn in place on a tty, else a line per quarter."""

    def __init__(self, url: str, total: int | None):
        self.name = url.rstrip("/").rsplit("/", 1)[-1] or url
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last_draw = 0.0
        self.next_quarter = 1
        _say(f"hlb: downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))

    def _text(self, done: int) -> str:
        if self.total:
            return f"{self.name}: {100 * done / self.total:5.1f}% of {self.total / 1e6:.1f} MB"
        return f"{self.name}: {done / 1e6:.1f} MB"

    def update(self, done: int) -> None:
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                sys.stderr.write("\r" + self._text(done))
                sys.stderr.flush()
        elif self.total and done * 4 >= self.next_quarter * self.total:
            while done * 4 >= self.next_quarter * self.total:
                self.next_quarter += 1
            if done < self.total:  # the final line comes from finish()
                _say(self._text(done))

    def finish(self, done: int) -> None:
        if self.tty:
            sys.stderr.write("\r" + self._text(done) + "\n")
            sys.stderr.flush()
        else:
            _say(self._text(done) + " done")


def _safe_member_name(member: tarfile.TarInfo, url: str, hint: str) -> PurePosixPath:
    path = PurePosixPath(member.name)
    unsafe = (
        path.is_absolute()
        or member.name.startswith(("/", "\\"))
        or ".." in path.parts
        or member.issym()
        or member.islnk()
        or not (member.isfile() or member.isdir())
    )
    if unsafe:
        raise DataError(
            f"refusing archive from {url}: unsafe member {member.name!r} "
            f"(absolute path, '..', link or device); {hint}"
        )
    return path


def _extract(tar_path: Path, dest: Path, url: str, md5s: Mapping[str, str], hint: str) -> None:
    """Copy the regular files of cifar-10-batches-py/ into dest, checking their MD5s."""
    out_dir = dest / FOLDER
    out_dir.mkdir()
    got: dict[str, str] = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                path = _safe_member_name(member, url, hint)
                parts = [p for p in path.parts if p != "."]
                if not member.isfile() or len(parts) != 2 or parts[0] != FOLDER:
                    continue  # only the batch folder's own files are wanted
                src = tar.extractfile(member)
                md5 = hashlib.md5(usedforsecurity=False)
                with src, open(out_dir / parts[1], "wb") as f:
                    while chunk := src.read(_CHUNK):
                        f.write(chunk)
                        md5.update(chunk)
                got[parts[1]] = md5.hexdigest()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"the archive downloaded from {url} is damaged ({_reason(e)}); {hint}"
        ) from None
    for name in SOURCE_FILES:
        if name not in got:
            raise DataError(f"the archive from {url} lacks {FOLDER}/{name}; {hint}")
        if got[name] != md5s[name]:
            raise DataError(
                f"{FOLDER}/{name} from {url} fails its MD5 check (corrupt or modified); {hint}"
            )


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _locked(data_dir: Path, progress: bool) -> Iterator[None]:
    """Hold an exclusive flock on data_dir/.hlb.lock; where locking is impossible (no
    fcntl, read-only dir, a filesystem without flock) carry on unlocked, as renames
    still keep readers safe."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress:
                    _say(f"hlb: waiting for another process preparing CIFAR-10 in {data_dir}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                os.close(fd)
                fd = None
        if fd is not None:
            _remove_stale_temps(data_dir)  # left by a killed run; safe while we hold the lock
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def _remove_stale_temps(data_dir: Path) -> None:
    for p in data_dir.glob(TMP_PREFIX + "*"):
        _remove(p)


def _remove(path: str | os.PathLike | None) -> None:
    if path is None:
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        _say(f"hlb: warning: could not remove temporary {path} ({_reason(e)})")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        text = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, urllib.error.URLError):
        text = str(e.reason)
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())  # keep error messages on one line


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

"""Downloading CIFAR-10: fetch the tarball with progress, check it, unpack only safe members.

Everything lands in temporaries inside the data dir and the batch folder is renamed into
place at the end, so a failed or interrupted download leaves nothing behind.
"""

import gzip
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from hlb.data.decode import FOLDER, SOURCE_FILES
from hlb.errors import DataError
from hlb.files import TMP_PREFIX, reason, remove

HINT = "put the official cifar-10-batches-py/ folder in {dir} or pass --data-dir"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def download_cifar10(data_dir, url, tar_md5, md5s, progress):
    """Fetch url into data_dir/cifar-10-batches-py/, checking the tarball and each file."""
    hint = HINT.format(dir=data_dir)
    tmp_tar = tmp_dir = None
    try:
        fd, tmp_tar = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tar.gz", dir=data_dir)
        with os.fdopen(fd, "wb") as f:
            got = _fetch(url, f, progress)
        if got != tar_md5.lower():
            raise DataError(f"could not download {url} (MD5 {got} != expected {tar_md5}: "
                            f"truncated or tampered download); {hint}")
        tmp_dir = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=data_dir)
        _extract(Path(tmp_tar), Path(tmp_dir), url, md5s, hint)
        os.replace(Path(tmp_dir) / FOLDER, data_dir / FOLDER)
    except DataError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        # URLError, HTTPError and timeouts are OSErrors; ValueError is a malformed URL
        raise DataError(f"could not download {url} ({_url_reason(e)}); {hint}") from None
    finally:  # also on KeyboardInterrupt, which then propagates unchanged
        remove(tmp_tar)
        remove(tmp_dir)


def _url_reason(e):
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return reason(e.reason)  # without urllib's "<urlopen error ...>" wrapping
    return reason(e)


def _fetch(url, out, progress):
    """Stream url into the file out; return the MD5 of what arrived."""
    md5 = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
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


def _content_length(resp):
    try:
        n = int(resp.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


class _Progress:
    """Progress on stderr: redrawn in place on a terminal, else a line per quarter."""

    def __init__(self, url, total):
        self.name = url.rstrip("/").rsplit("/", 1)[-1] or url
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last_draw = 0.0
        self.next_quarter = 1
        _say(f"hlb: downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))

    def _text(self, done):
        if self.total:
            return f"{self.name}: {100 * done / self.total:5.1f}% of {self.total / 1e6:.1f} MB"
        return f"{self.name}: {done / 1e6:.1f} MB"

    def update(self, done):
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                _say("\r" + self._text(done), end="")
        elif self.total and done * 4 >= self.next_quarter * self.total:
            while done * 4 >= self.next_quarter * self.total:
                self.next_quarter += 1
            if done < self.total:  # the last line comes from finish()
                _say(self._text(done))

    def finish(self, done):
        if self.tty:
            _say("\r" + self._text(done))
        else:
            _say(self._text(done) + " done")


def _say(text, end="\n"):
    print(text, end=end, file=sys.stderr, flush=True)


def _extract(tar_path, dest, url, md5s, hint):
    """Copy the regular files of cifar-10-batches-py/ into dest, checking their MD5s."""
    out_dir = dest / FOLDER
    out_dir.mkdir()
    got = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                parts = [p for p in _safe_path(member, url, hint).parts if p != "."]
                if not member.isfile() or len(parts) != 2 or parts[0] != FOLDER:
                    continue  # only the batch folder's own files are wanted
                got[parts[1]] = _copy_member(tar, member, out_dir / parts[1])
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"the archive downloaded from {url} is damaged ({reason(e)}); "
                        f"{hint}") from None
    for name in SOURCE_FILES:
        if name not in got:
            raise DataError(f"the archive from {url} lacks {FOLDER}/{name}; {hint}")
        if got[name] != md5s[name]:
            raise DataError(f"{FOLDER}/{name} from {url} fails its MD5 check "
                            f"(corrupt or modified); {hint}")


def _copy_member(tar, member, out_path):
    """Write one member to out_path; return its MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    with tar.extractfile(member) as src, open(out_path, "wb") as f:
        while chunk := src.read(_CHUNK):
            f.write(chunk)
            md5.update(chunk)
    return md5.hexdigest()


def _safe_path(member, url, hint):
    """The member's path, refusing anything that could land outside the folder."""
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
        raise DataError(f"refusing archive from {url}: unsafe member {member.name!r} "
                        f"(absolute path, '..', link or device); {hint}")
    return path

"""Which code ran: what every record keeps so that anyone can tell whether their code is it.

- `source_sha256`: a hash of every .py file of the package, by path and content. It names the
  code that ran whether or not it came from a git checkout (a pip install of the same tree
  gives the same hash), and it is what --resume and `verify` compare.
- `git_commit`, `dirty`, `diff_sha256` and `diff`: the commit, whether the package or main.py
  differed from it (untracked files in the package included), a hash of that difference, and
  the difference itself as a patch when it is small, so that the code can be rebuilt:
  check out the commit, `git apply` the diff. Outside a checkout these are None.
"""

import functools
import hashlib
import re
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]      # hlb/
CHECKOUT = PACKAGE.parent
DIFF_LIMIT = 64 * 1024          # bytes of diff kept in a record; larger ones keep the hash alone


def source_sha256(package=PACKAGE):
    """The hash of the package's source: each .py file's path (from the package) and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _git(*args, cwd):
    """git's output, or None when git or the checkout is not there."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, cwd=cwd, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    # `git diff --no-index` exits 1 when the files differ, which is what it is asked for.
    return out.stdout if out.returncode in (0, 1) else None


def git_commit(checkout=CHECKOUT):
    """The commit checked out (None outside a git checkout)."""
    out = _git("rev-parse", "HEAD", cwd=checkout)
    commit = out.decode().strip() if out else ""
    # Outside a checkout git may echo "HEAD" back; keep only a real commit id.
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def working_diff(checkout=CHECKOUT):
    """The patch from the commit to the tree for the code that runs (main.py and the package,
    untracked files in it as new files), as bytes; None outside a checkout."""
    paths = ["main.py", PACKAGE.name]
    tracked = _git("diff", "HEAD", "--binary", "--", *paths, cwd=checkout)
    if tracked is None:
        return None
    listed = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *paths,
                  cwd=checkout) or b""
    untracked = [_git("diff", "--no-index", "--binary", "--", "/dev/null", name.decode(),
                      cwd=checkout) or b"" for name in sorted(listed.split(b"\0")) if name]
    return tracked + b"".join(untracked)


def identity(package=PACKAGE, checkout=CHECKOUT):
    """What a record keeps of its code (see the module's text), read now."""
    commit = git_commit(checkout) if (checkout / ".git").exists() else None
    diff = working_diff(checkout) if commit else None
    return {
        "source_sha256": source_sha256(package),
        "git_commit": commit if diff is not None else None,
        "dirty": None if diff is None else bool(diff),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        "diff": diff.decode(errors="replace") if diff and len(diff) <= DIFF_LIMIT else None,
    }


@functools.cache
def running_code():
    """The identity of the code this process runs: read once, on first use (the command line
    asks before any run), so that every record of an invocation names the same code."""
    return identity()


def describe(code):
    """A record's code, in words: "commit 1a2b3c4d with uncommitted edits (diff 5e6f7a8b)"."""
    if not isinstance(code, dict):
        return "unknown code"
    commit = code.get("git_commit")
    words = f"commit {commit[:8]}" if isinstance(commit, str) else "code outside git"
    if code.get("dirty"):
        diff = code.get("diff_sha256")
        words += f" with uncommitted edits (diff {diff[:8] if isinstance(diff, str) else '?'})"
    source = code.get("source_sha256")
    return words + f", source {source[:12] if isinstance(source, str) else '?'}"

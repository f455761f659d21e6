"""Files written whole or not at all, the temporaries that takes, and one-line reasons.

Every file hlb keeps (records, plots, the data cache) is written beside its target under a
temporary name and renamed into place, so a reader never sees half a file.
"""

import os
import secrets
import shutil
import sys
from pathlib import Path

TMP_PREFIX = ".hlb-tmp-"  # every temporary hlb makes starts with this, so a sweep can find it


def write_atomic(path, write):
    """Call write(f) on a new binary file beside path, then rename it to path.

    The old file, if any, stays until the new one is complete and on disk; if write or
    anything after it fails, the temporary is removed and the error propagates.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    # Not mkstemp: its 0600 mode would make files in a shared folder private.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def remove(path):
    """Remove a temporary file or folder if it is there; warn, not fail, if it cannot be."""
    if path is None:
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        print(f"hlb: warning: could not remove temporary {path} ({reason(e)})",
              file=sys.stderr, flush=True)


def reason(e):
    """The text of an exception on one line, for messages that must stay one line."""
    return " ".join((str(e) or type(e).__name__).split())

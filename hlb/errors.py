"""Errors meant for the user: one line, what went wrong and what to do.

Anything else that escapes is a bug in hlb: the command line saves its traceback to a file
and prints one line naming the file (hlb.bench.cli.main; HLB_DEBUG=1 shows the traceback instead).
"""


import os
import traceback as tb


class HlbError(Exception):
    """A problem the user can fix; the command line prints it as one line and exits non-zero."""

    exit_code = 1

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(HlbError):
    """A bad flag, recipe name or override value."""

    exit_code = 2


class DataError(HlbError):
    """CIFAR-10 is missing, corrupt, or could not be downloaded."""


class AlreadyReported(HlbError):
    """A failure that another process reports: under torchrun rank 0 prints it and sets the
    exit status, and the other ranks exit quietly."""


class Unexpected(HlbError):
    """An exception no code path expected (a bug, or a fault hlb does not know), caught so that
    the finished runs are kept; `traceback` is its full text, for the file the command line
    writes."""

    def __init__(self, message, traceback):
        super().__init__(message)
        self.traceback = traceback

    @classmethod
    def wrapping(cls, exc):
        """`exc` in one line (its type, its message's first line, the file and line where it
        was raised), keeping its full traceback."""
        frames = tb.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" \
            if frames else ""
        first = (str(exc).splitlines() or [""])[0]
        return cls(f"unexpected {type(exc).__name__} ({first}){where}",
                   "".join(tb.format_exception(exc)))

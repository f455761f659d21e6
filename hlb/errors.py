"""Errors meant for the user: one line, what went wrong and what to do.

Anything else that escapes is a bug in hlb and keeps its traceback.
"""


class HlbError(Exception):
    """A problem the user can fix; the command line prints it as one line and exits non-zero."""

    exit_code = 1


class UsageError(HlbError):
    """A bad flag, recipe name or override value."""

    exit_code = 2


class DataError(HlbError):
    """CIFAR-10 is missing, corrupt, or could not be downloaded."""

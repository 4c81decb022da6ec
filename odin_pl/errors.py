"""The exception a user can fix: the entry points print its message on one line and exit with status 2.

Checks of options, files and data raise :class:`UserError` (a ValueError, so callers that catch ValueError still
do); anything else that escapes an entry point is a bug and keeps its traceback. ``--debug`` shows the traceback
of a UserError too.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave or pointed at is wrong; the message says what and how to fix it."""


class OutputError(UserError, OSError):
    """A result could not be written (disk full, no permission, read-only file system); nothing partial is left."""

"""The exception a user can fix: the entry points print its message on one line and exit with status 2.

Checks of options, files and data raise :class:`UserError` (a ValueError, so callers that catch ValueError still
do); anything else that escapes an entry point is a bug and keeps its traceback. ``--debug`` shows the traceback
of a UserError too.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Callable, Iterable, Sequence


class UserError(ValueError):
    """Something the user gave or pointed at is wrong; the message says what and how to fix it."""


class OutputError(UserError, OSError):
    """A result could not be written (disk full, no permission, read-only file system); nothing partial is left."""


class NonFiniteScoresError(UserError):
    """A model gave NaN or infinite scores (corrupt weights, an overflow): no metric or decision is made from them."""


class PeerFailedError(RuntimeError):
    """A collective of a run of several processes failed because another process stopped (that process's own
    message says why); raised only by the collectives of ``odin_pl.distributed``, so that a process's own
    RuntimeError is never mistaken for it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed at (or that a data set needs) does not exist."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the valid spelling closest to ``name`` (difflib's ratio >= 0.6), else ""."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


DEBUG_FLAG = "--debug"  # on the command line of train.py and evaluate.py: show a user error's traceback
TRUST_FLAG = "--trust_pickle true"  # evaluate.py: the source of the checkpoint or weights file is trusted


def without_debug_flag(argv: Sequence[str]) -> list[str]:
    """The command line without :data:`DEBUG_FLAG` (which the entry points read before parsing)."""
    return [arg for arg in argv if arg != DEBUG_FLAG]


def report_user_error(prog: str, err: UserError, argv: Sequence[str], rewrite: Callable[[str], str] = str,
                      process: str = "") -> int:
    """Print ``<prog>: error<process>: <message>`` (``rewrite`` applied to it) on stderr and return the exit status
    2; with ``--debug`` in ``argv``, raise ``err`` again instead (its full traceback). An error that is the same on
    every process of a launched run (``same_on_every_process``: a bad option) is printed by process 0 only."""
    if DEBUG_FLAG in argv:
        raise err
    if getattr(err, "same_on_every_process", False) and os.environ.get("RANK", "0") != "0":
        return 2
    print(f"{prog}: error{process}: {rewrite(str(err))}", file=sys.stderr)
    return 2

"""Progress of a long pass as a terminal and a log each read it: a progress bar on a terminal; without one (a log
file, a pipe) plain lines, one when the pass ends and one at each 10% of it when a line is due (every
``quiet_seconds``), never a flood of carriage-return updates."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def duration(seconds: float) -> str:
    """'42 s', '3 min 07 s'."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def with_progress(items: Iterable[T], desc: str | None, *, enabled: bool = True, unit: str = "batches",
             quiet_seconds: float = 30.0) -> Iterator[T]:
    """``items`` as they are, with their progress on stderr under the name ``desc`` (none when ``desc`` is None or
    not ``enabled``): tqdm's bar on a terminal, else the lines of this module's docstring."""
    if desc is None or not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, leave=False)
        return
    total = len(items) if hasattr(items, "__len__") else None
    start = last = time.monotonic()
    done, next_tenth = 0, 1
    for item in items:
        yield item
        done += 1
        tenth = done * 10 // total if total else 0
        if total and next_tenth <= tenth < 10:
            next_tenth = tenth + 1
            if time.monotonic() - last >= quiet_seconds:
                last = time.monotonic()
                print(f"{desc}: {tenth * 10}% ({done}/{total} {unit}, {duration(last - start)})", file=sys.stderr,
                      flush=True)
    print(f"{desc}: done ({done} {unit}, {duration(time.monotonic() - start)})", file=sys.stderr, flush=True)

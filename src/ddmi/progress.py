"""Progress bars for the loops that run for minutes outside training and sampling: meshing,
rendering turntables, reconstructing. A bar is tqdm on ``sys.stderr`` (looked up when the bar is
made), shown only when that stream is a terminal, so logs and CI output get the commands' summary
lines alone; it is removed when done (the command then logs what it wrote)."""

from __future__ import annotations

import sys


def progress_bar(total: int | None, desc: str, unit: str, *, enabled: bool = True):
    """A bar of ``total`` items (``None``: a count without an ETA); ``enabled=False`` (another
    process than the main one) gives a bar that shows nothing. Use as a context manager and
    call ``update(n)`` per ``n`` items done."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None if enabled else True)


def share(count: int, processes: int) -> int:
    """About how many of ``count`` items one of ``processes`` processes does (the bar's total)."""
    return -(-count // max(1, processes))

"""Writing files: atomic writes and the no-overwrite rule of every command."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ddmi.errors import DDMIError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_free(paths: list[Path], overwrite: bool) -> None:
    """Refuse to start when any of ``paths`` exists, unless ``overwrite`` (checked before any
    compute, so nothing is lost and no time is wasted)."""
    if overwrite:
        return
    taken = [p for p in paths if Path(p).exists()]
    if taken:
        raise DDMIError(f"{taken[0]} exists ({len(taken)} output files would be overwritten); "
                        "pass --overwrite or choose another --out")

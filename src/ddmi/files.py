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


LOCK_NAME = ".ddmi.lock"


class LockError(DDMIError):
    """Another process holds the lock of a folder."""


class FolderLock:
    """An OS-level lock (``flock``) on ``folder/.ddmi.lock``, held while one command writes into
    the folder (a training run). A second process gets a :class:`LockError` naming the holder's
    pid and command. The lock is released when the holder exits, however it exits (the kernel
    drops it with the file descriptor); the small lock file stays and is reused."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl
        import sys
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockError(f"{self.folder} is in use by {f'process {holder}' if holder else 'another process'}; "
                            "wait for it to finish (or stop it), or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:                  # who holds it, for the message of the next one (best effort: a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} ({' '.join(['ddmi', *sys.argv[1:3]])})\n".encode(), 0)
        except OSError:
            pass
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

"""Writing files: atomic writes, permissions from the umask, the no-overwrite rule of every
command, and the lock of a folder that one process writes into."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ddmi.errors import DDMIError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path: Path, *, folder: bool = False) -> None:
    """Give a file (``0o666``) or folder (``0o777``) made by ``tempfile`` (``0o600``/``0o700``) the
    permissions the user's umask asks for, as ``open()`` and ``mkdir()`` would have."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` (permissions from the umask)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    honour_umask(tmp, folder=True)
    return tmp


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """The one way ddmi writes a file: yields a temporary path next to ``path`` (a hidden
    ``.NAME.*.tmp``, which no folder listing takes for data), which becomes ``path`` by a rename once the block
    succeeded (fsynced; permissions from the umask, as ``open()`` gives), and is removed if it
    fails. A crash never leaves a half-written ``path``."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        honour_umask(tmp)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(file)`` into ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def output_stems(paths: list[Path], *, folders_are_items: bool = False) -> list[str]:
    """Names for the outputs of ``paths`` that never collide: the file stems (a folder's own name
    with ``folders_are_items``), or ``<folder>_<stem>`` when stems repeat (ONet clouds are all
    ``pointcloud.npz``), or ``<index>_...`` if that still repeats."""
    paths = [Path(p) for p in paths]
    stems = [p.name if folders_are_items and p.is_dir() else p.stem for p in paths]
    if len(set(stems)) < len(stems):
        stems = [f"{p.parent.name}_{s}" for p, s in zip(paths, stems)]
    if len(set(stems)) < len(stems):
        stems = [f"{i:04d}_{s}" for i, s in enumerate(stems)]
    return stems


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

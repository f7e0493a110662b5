"""Reading ``.npz`` / ``.npy`` files of untrusted origin with bounded memory and time.

Every failure is a :class:`DataError` naming the file. Before anything is decompressed, the file
must be a regular file (a FIFO or a device would block forever), must start with the format's
magic bytes (a ``.npy`` named ``.npz`` is named as such), and every array's declared size (its
``.npy`` header: shape x item size, and the zip directory's uncompressed size) must fit
:data:`MAX_ARRAY_BYTES` (a 2 MB zip bomb declares gigabytes). The limit is overridable with the
environment variable ``DDMI_MAX_ARRAY_BYTES`` (bytes); see ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ddmi.errors import DataError

MAX_ARRAY_BYTES = 256 << 20    # per file: ONet shapes hold ~3 MB, srn-cars objects ~3-30 MB
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def max_array_bytes() -> int:
    value = os.environ.get("DDMI_MAX_ARRAY_BYTES")
    if value is None:
        return MAX_ARRAY_BYTES
    try:
        return int(value)
    except ValueError:
        raise DataError(f"DDMI_MAX_ARRAY_BYTES={value!r} is not a number of bytes") from None


def check_regular_file(path: Path) -> None:
    """A DataError unless ``path`` is a regular file (symlinks to one are fine)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a folder, FIFO or device); refusing to read it")


def _declared_bytes(header_stream, path: Path, name: str) -> int:
    """The byte size an ``.npy`` header declares (reads only the header)."""
    try:
        version = np.lib.format.read_magic(header_stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(header_stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(header_stream)
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with ast/tokenize: any error
        raise DataError(f"{path}: array {name!r} has a damaged header ({type(exc).__name__}: {exc})"
                        .splitlines()[0]) from None
    if dtype.hasobject:
        raise DataError(f"{path}: array {name!r} holds Python objects (pickles); refusing to read it")
    return int(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def _check_size(path: Path, name: str, nbytes: float, limit: int) -> None:
    if nbytes > limit:
        raise DataError(f"{path}: array {name!r} declares {nbytes / 2**20:.0f} MiB, more than the limit of "
                        f"{limit / 2**20:.0f} MiB (set DDMI_MAX_ARRAY_BYTES to allow more)")


def load_npz(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all required) and those of ``optional`` that the file holds, read
    without unpickling and within :func:`max_array_bytes`. A missing key, a truncated or damaged
    archive, a file that is not an ``.npz`` archive, or an array header that declares more data
    than the limit raises :class:`DataError`."""
    path = Path(path)
    check_regular_file(path)
    limit = max_array_bytes()
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic.startswith(NPY_MAGIC):
            raise DataError(f"{path}: is a single .npy array, not an .npz archive (rename it to .npy)")
        if not magic.startswith(ZIP_MAGIC[:2]):
            raise DataError(f"{path}: not an .npz archive (it does not start with the zip signature)")
        with zipfile.ZipFile(path) as archive:
            total = 0
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                _check_size(path, name, info.file_size, limit)
                with archive.open(info) as member:
                    declared = _declared_bytes(member, path, name)
                _check_size(path, name, declared, limit)
                total += declared
            _check_size(path, "(all arrays)", total, limit)
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(repr(k) for k in missing)} "
                                f"(has: {', '.join(data.files) or 'nothing'})")
            return {k: data[k] for k in (*keys, *optional) if k in data.files}
    except DataError:
        raise
    except MemoryError as exc:
        raise DataError(f"{path}: an array's header declares more data than can be allocated "
                        f"({exc})".splitlines()[0]) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error,
            zipfile.LargeZipFile) as exc:
        # NotImplementedError: a damaged zip header names an unknown compression or version
        raise DataError(f"{path}: unreadable .npz file ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def load_npy(path: Path) -> np.ndarray:
    """One ``.npy`` array, read without unpickling and within :func:`max_array_bytes`."""
    path = Path(path)
    check_regular_file(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != NPY_MAGIC:
                raise DataError(f"{path}: not an .npy array (it does not start with the .npy signature)")
            fh.seek(0)
            declared = _declared_bytes(fh, path, path.stem)
        _check_size(path, path.stem, declared, max_array_bytes())
        size = path.stat().st_size
        if size < declared:
            raise DataError(f"{path}: truncated ({size} bytes on disk, the header declares {declared} of data)")
        return np.load(path, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npy file ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def load_points(path: Path, key: str = "points") -> np.ndarray:
    """A point cloud from an ``.npy`` array or the ``key`` array of an ``.npz`` archive."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path, (key,))[key]
    return load_npy(path)

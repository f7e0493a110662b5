"""Reading ``.npz`` archives of untrusted origin: every failure is a :class:`DataError` naming the file."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from ddmi.errors import DataError


def load_npz(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all required) and those of ``optional`` that the file holds, read
    without unpickling. A missing key, a truncated or damaged archive, or an array header that
    declares more data than can be allocated raises :class:`DataError`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(repr(k) for k in missing)} "
                                f"(has: {', '.join(data.files) or 'nothing'})")
            return {k: data[k] for k in (*keys, *optional) if k in data.files}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except MemoryError as exc:   # a damaged .npy header can declare an array of petabytes
        raise DataError(f"{path}: an array's header declares more data than can be allocated "
                        f"({exc})".splitlines()[0]) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as exc:
        # NotImplementedError: a damaged zip header names an unknown compression or version
        raise DataError(f"{path}: unreadable .npz file ({type(exc).__name__}: {exc})".splitlines()[0]) from None

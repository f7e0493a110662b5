"""Reading an official DDMI checkpoint file without running any code from it.

``torch.load(weights_only=True)`` refuses every global a pickle names unless it is allow-listed.
Official ``ldm-*.pt`` files name a few non-tensor classes in their ``args`` entry (fixtures README
section 2.3): an ``argparse.Namespace`` whose ``*config`` fields are omegaconf ``DictConfig``
objects. Their pickled state names exactly these globals::

    argparse.Namespace
    omegaconf.dictconfig.DictConfig, omegaconf.listconfig.ListConfig, omegaconf.nodes.AnyNode
    omegaconf.base.ContainerMetadata, omegaconf.base.Metadata
    typing.Any, collections.defaultdict, builtins.dict / list / int / float / str / bool

Each is replaced by an inert stand-in (:data:`ALLOWED`: a plain class whose instances only receive
their pickled ``__dict__``, a sentinel, or a function returning ``{}``), so neither argparse nor
omegaconf code runs, and the stand-ins are then turned into plain ``dict``/``list`` values by
:func:`plain`. A file whose pickle names any other global is refused with a one-line
:class:`~ddmi.errors.CheckpointError` naming the file and the global, before anything is built
from it.
"""

from __future__ import annotations

import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from ddmi.errors import CheckpointError

__all__ = ["ALLOWED", "read_official_file", "plain"]


class _StandIn:
    """An inert object: unpickling gives it its pickled ``__dict__`` (``BUILD``) and nothing else."""

    kind = ""

    def __repr__(self) -> str:
        return f"<official {self.kind}>"


def _stand_in(kind: str) -> type:
    return type(f"Official{kind}", (_StandIn,), {"kind": kind})


Namespace = _stand_in("Namespace")
DictConfig = _stand_in("DictConfig")
ListConfig = _stand_in("ListConfig")
AnyNode = _stand_in("AnyNode")
ContainerMetadata = _stand_in("ContainerMetadata")
Metadata = _stand_in("Metadata")


class _TypeName(str):
    """A class an omegaconf ``Metadata`` only refers to (``ref_type``, ``object_type``): its name."""


def _defaultdict(*args) -> dict:
    """``collections.defaultdict(factory)`` (omegaconf's empty ``resolver_cache``) -> ``{}``."""
    return {}


#: ``(stand-in, "module.Name")``: every non-tensor global an official checkpoint's pickle names
ALLOWED: list[tuple[Any, str]] = [
    (Namespace, "argparse.Namespace"),
    (DictConfig, "omegaconf.dictconfig.DictConfig"),
    (ListConfig, "omegaconf.listconfig.ListConfig"),
    (AnyNode, "omegaconf.nodes.AnyNode"),
    (ContainerMetadata, "omegaconf.base.ContainerMetadata"),
    (Metadata, "omegaconf.base.Metadata"),
    (_TypeName("typing.Any"), "typing.Any"),
    (_defaultdict, "collections.defaultdict"),
    *((_TypeName(f"builtins.{n}"), f"builtins.{n}") for n in ("dict", "list", "int", "float", "str", "bool")),
]


def plain(obj: Any) -> Any:
    """``obj`` with every stand-in replaced by plain values: ``Namespace`` -> ``dict`` of its
    fields, ``DictConfig`` -> ``dict``, ``ListConfig`` -> ``list``, ``AnyNode`` -> its value (an
    interpolation stays its ``"${...}"`` string). Tensors and numbers are returned as they are."""
    if isinstance(obj, Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, (DictConfig, ListConfig)):
        content = vars(obj).get("_content")
        if isinstance(content, dict):
            return {k: plain(v) for k, v in content.items()}
        if isinstance(content, list):
            return [plain(v) for v in content]
        return content  # None (a None config) or a string ("???", "${...}")
    if isinstance(obj, AnyNode):
        return plain(vars(obj).get("_val"))
    if isinstance(obj, _TypeName):
        return str(obj)
    if isinstance(obj, _StandIn):
        raise CheckpointError(f"unexpected omegaconf object {obj!r} outside a config")
    if isinstance(obj, dict) and any(_holds_stand_in(v) for v in obj.values()):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(_holds_stand_in(v) for v in obj):
        return type(obj)(plain(v) for v in obj)
    return obj


def _holds_stand_in(obj: Any) -> bool:
    if isinstance(obj, (_StandIn, _TypeName)):
        return True
    if isinstance(obj, dict):
        return any(_holds_stand_in(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_stand_in(v) for v in obj)
    return False


_GLOBAL = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


def _check_path(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a pipe, socket or device), not a checkpoint")
    if st.st_size == 0:
        raise CheckpointError(f"{path} is empty, not a checkpoint")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def read_official_file(path: str | Path) -> dict:
    """The top-level dict of an official ``model-*.pt`` / ``ldm-*.pt``, on the CPU, its ``args``
    (if any) as plain containers. Never runs code from the file. Every problem (missing, folder,
    pipe, empty, not a checkpoint, truncated, a pickle that needs another class, not a dict) is a
    one-line :class:`CheckpointError` naming the file."""
    path = Path(path)
    _check_path(path)
    head = _head(path)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt (a zip archive without its central directory)")
    # b"\x80": the PROTO opcode that starts every protocol >= 2 pickle (the legacy torch.save format)
    if not head.startswith((b"PK", b"\x80")):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(ALLOWED):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL.search(text)
        if found:
            raise CheckpointError(
                f"{path} needs the Python object {found.group(1)}, which no official DDMI checkpoint "
                "holds: refused without loading it (nothing from the file was run)") from None
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(text)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(str(exc))})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a DDMI checkpoint dict")
    return {k: plain(v) for k, v in obj.items()}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[0] if lines else "unreadable"
    return line[:200]

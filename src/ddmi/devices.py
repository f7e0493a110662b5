"""The device rule of generation (sample, reconstruct, eval) and its sharding across processes.

* :func:`default_device`: ``cuda`` when a GPU is visible, else ``cpu``.
* :func:`resolve_device`: a device name (``"cuda:1"``, ``"cpu"``, a ``torch.device``, ``None`` for
  the default) checked against this machine; a bad name or an absent GPU is a one-line
  :class:`~ddmi.errors.ConfigError`.
* :class:`Shard`: this process's share of the work under ``accelerate launch --num_processes N``
  (one process, the whole work, without it). Work is split by whole batches: process ``r`` of
  ``W`` takes batches ``r, r + W, r + 2W, ...``, so each batch sees the same noise and generator
  seed as in one process and the results do not depend on ``W``.

Models, noise, latents and evaluation batches live on the device; results move to the CPU only
at the file boundary (and to be gathered: ``gather`` moves CPU objects between processes).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ddmi.errors import ConfigError

_HINT = "a torch device such as cpu, cuda or cuda:1"


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None, *, allow_meta: bool = True) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (``None``: :func:`default_device`).

    ``allow_meta=False`` (the command line) also refuses ``meta``, which holds no data."""
    if device is None:
        return default_device()
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device).strip())
        except (RuntimeError, ValueError):
            raise ConfigError(f"unknown device {device!r}; use {_HINT}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(device)!r}: this machine has {count} CUDA device(s) "
                              f"(cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {str(device)!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type == "meta":
        if not allow_meta:
            raise ConfigError(f"device 'meta' holds no data and cannot produce files; use {_HINT}")
    elif dev.type != "cpu":
        raise ConfigError(f"device {str(device)!r} is not supported here; use {_HINT}")
    return dev


def launched_processes() -> int:
    """How many processes ``accelerate launch`` / ``torchrun`` started (``WORLD_SIZE``; 1 without)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class Shard:
    """This process's share of a generation job (see the module docstring).

    ``device``: the requested device (``None``: the launcher's device for this process under
    ``accelerate launch``, else :func:`default_device`). A bare ``cuda`` under several processes
    means this process's GPU (``cuda:<local rank>``)."""

    def __init__(self, device: str | torch.device | None = None, *, allow_meta: bool = True):
        requested = None if device is None else resolve_device(device, allow_meta=allow_meta)
        self.state, self.rank, self.world = None, 0, 1
        if launched_processes() > 1:
            # accelerate's process state (gloo on CPUs, NCCL on GPUs), only when launched with
            # several processes: a single process leaves the shared state to training
            from accelerate import PartialState
            cpu = not torch.cuda.is_available() or (requested is not None and requested.type == "cpu")
            self.state = PartialState(cpu=cpu)
            self.rank, self.world = self.state.process_index, self.state.num_processes
        if self.world > 1 and (requested is None or (requested.type == self.state.device.type
                                                     and requested.index is None)):
            state_device = torch.device(self.state.device)
            self.device = torch.device("cpu") if state_device.type == "cpu" else state_device
        else:
            self.device = requested if requested is not None else default_device()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def starts(self, n: int, batch_size: int) -> list[int]:
        """Start indices of this process's batches of ``range(n)`` in batches of ``batch_size``."""
        return list(range(0, n, batch_size))[self.rank::self.world]

    def gather(self, items: list) -> list:
        """Every process's ``items`` (CPU objects), concatenated in rank order, on every process."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object
        return gather_object(list(items))

    def gather_by_start(self, pairs: list[tuple[int, Any]]) -> list[Any]:
        """``[(start, value), ...]`` of every process -> the values in ``start`` order."""
        return [v for _, v in sorted(self.gather(pairs), key=lambda p: p[0])]

    def describe(self) -> str:
        """``", on cpu"`` / ``", on cuda:0 and 3 more processes"``: for the main process's report."""
        return f", on {self.device}" + (f" and {self.world - 1} more process(es)" if self.world > 1 else "")

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer; ``cpu`` if it has neither)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def module_devices(module: torch.nn.Module) -> set[torch.device]:
    """The devices of every parameter and buffer of ``module`` (for placement checks)."""
    return {t.device for t in (*module.parameters(), *module.buffers())}

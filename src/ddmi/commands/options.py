"""What every command shares: the log line, CPU threads, early checks of options."""

from __future__ import annotations

import os
import sys

import torch

from ddmi.config import SAMPLER_NAMES
from ddmi.devices import resolve_device
from ddmi.errors import ConfigError


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def torch_threads() -> None:
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))


def check_options(args, *names: str) -> None:
    """Reject non-positive counts/sizes and unknown samplers before any work starts."""
    for name in names:
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    sampler = getattr(args, "sampler", None)
    if sampler is not None and sampler not in SAMPLER_NAMES:
        raise ConfigError(f"unknown sampler '{sampler}'; choose from {', '.join(SAMPLER_NAMES)}")
    if getattr(args, "eta", 0.0) < 0:
        raise ConfigError(f"--eta must be >= 0, got {args.eta}")


#: the domain-specific options of ``ddmi sample`` / ``ddmi reconstruct`` and their "not given" values
DOMAIN_OPTIONS = {"frames": None, "views": None, "normalize": False, "radius": None, "elevation": None}


def check_domain_options(args, domain, reads: tuple[str, ...], command: str) -> None:
    """An option given to ``ddmi COMMAND`` that the run's domain does not read is an error (it
    would be ignored silently)."""
    for name, unset in DOMAIN_OPTIONS.items():
        if hasattr(args, name) and getattr(args, name) != unset and name not in reads:
            users = ", ".join(sorted(n for n in domains_reading(name, command))) or "no domain"
            raise ConfigError(f"--{name} does not apply to {domain.name} runs (`ddmi {command} --{name}` is read by "
                              f"{users})")


def domains_reading(option: str, command: str) -> list[str]:
    from ddmi import domains
    return [n for n in domains.names() if option in getattr(domains.get(n), f"{command}_options", ())]


def check_out_folder(path) -> None:
    """``--out`` / ``OUT_DIR`` must name a folder (or nothing yet): checked before any compute."""
    from pathlib import Path
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{path} is a file, not a folder: choose a folder for the output")


def device_option(args):
    """``--device`` checked before any work starts (a one-line error for a bad name, an absent
    GPU, or ``meta``); ``None`` when not given (then: the launcher's device under ``accelerate
    launch``, else ``cuda`` when available, else ``cpu``)."""
    name = getattr(args, "device", None)
    return None if name is None else resolve_device(name, allow_meta=False)

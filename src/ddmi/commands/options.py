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


def check_domain_options(args, domain, command: str) -> None:
    """An option of ``ddmi COMMAND`` that only some domains read (:attr:`Domain.command_options`),
    given for a run of a domain that does not read it, is an error (it would be ignored)."""
    from ddmi import domains
    reads = domain.command_options.get(command, {})
    for name in domains.names():
        for option in domains.get(name).command_options.get(command, {}):
            if option not in reads and getattr(args, option, None) not in (None, False):
                users = sorted(n for n in domains.names() if option in domains.get(n).command_options.get(command, {}))
                raise ConfigError(f"--{option} does not apply to {domain.name} runs (`ddmi {command} --{option}` is "
                                  f"read by {', '.join(users)} runs)")


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

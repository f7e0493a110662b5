"""Run folders and checkpoints.

A run folder is self-describing and enough to sample from::

    RUN/
      config.yaml                    the resolved configuration
      run.yaml                       stage (vae | ldm), domain, ddmi version
      checkpoints/step-00000500/     model.safetensors (+ ema.safetensors), state.pt, COMPLETE
      vae/                           (LDM runs) a copy of the frozen VAE: config.yaml, model.safetensors
      logs/metrics.jsonl, logs/tb/   scalars (JSON lines; TensorBoard if installed)
      samples/                       periodic PNG grids

Weights are safetensors; the training state (optimiser, counters) is a plain dict of tensors and
numbers loaded with ``torch.load(weights_only=True)``, so loading never executes code. A
checkpoint is written to a temporary folder, flushed, marked ``COMPLETE`` and renamed into place,
so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddmi import __version__
from ddmi.config import load_config, to_yaml
from ddmi.errors import CheckpointError, ConfigError
from ddmi.files import atomic_write_bytes, atomic_write_text, honour_umask, make_temp_dir  # noqa: F401 - re-exported

CKPT_DIR = "checkpoints"
MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def state_dict_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------
# run folders


def init_run_dir(run_dir: Path, cfg: DictConfig, stage: str) -> None:
    """Make ``run_dir`` a run folder of ``stage``: ``run.yaml`` first (with ``started: false``,
    so that a start that fails before training leaves a folder the corrected command accepts),
    then ``config.yaml``; :func:`mark_started` once the run's data and models are built."""
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"stage": stage, "domain": cfg.domain, "ddmi_version": __version__, "started": False}
    atomic_write_text(run_dir / "run.yaml", yaml.safe_dump(info))
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))


def run_started(run_dir: Path) -> bool:
    """Whether the run's first start succeeded: False when ``run.yaml`` says ``started: false``,
    or when its start was cut short (``run.yaml`` unreadable, no ``config.yaml``: a full disk)."""
    try:
        info = yaml.safe_load((Path(run_dir) / "run.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(info, dict) and info.get("started", True) is not False \
        and (Path(run_dir) / "config.yaml").is_file()


def mark_started(run_dir: Path) -> None:
    """Record in ``run.yaml`` that the run's first start succeeded (its config is now fixed)."""
    info = read_run_info(run_dir)
    if not info.get("started", True):
        info["started"] = True
        atomic_write_text(Path(run_dir) / "run.yaml", yaml.safe_dump(info))


def read_run_info(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    info_path = run_dir / "run.yaml"
    if not info_path.is_file() or not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a ddmi run folder (no run.yaml / config.yaml)")
    try:
        info = yaml.safe_load(info_path.read_text())
        assert isinstance(info, dict) and "stage" in info and "domain" in info
    except Exception:
        raise CheckpointError(f"{info_path} is corrupt") from None
    return info


def load_run_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    try:
        if not path.read_text().strip():
            raise CheckpointError(f"{path} is empty (a damaged run folder)")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return load_config(str(Path(run_dir) / "config.yaml"))
    except ConfigError as exc:
        raise CheckpointError(f"{run_dir}: {exc}") from None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / MARKER).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(run_dir: Path, step: int, *, weights: dict[str, dict[str, torch.Tensor]],
                    state: dict, keep: int = 2) -> Path:
    """Write ``weights`` (name -> state dict, each saved as NAME.safetensors) and ``state``.

    Returns the final checkpoint folder ``RUN/checkpoints/step-XXXXXXXX``.
    """
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = make_temp_dir(folder, f".tmp-step-{step:08d}-")
    try:
        for name, sd in weights.items():
            save_file(sd, str(tmp / f"{name}.safetensors"), metadata={"ddmi_version": __version__})
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            honour_umask(f)               # safetensors writes 0600
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        (tmp / MARKER).write_text(str(step))
        _fsync_dir(tmp)
        trash = None
        if final.exists():  # re-saving a step: move the old copy aside atomically, never tear it
            trash = folder / f".tmp-old-{final.name}-{os.getpid()}"
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(folder)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except (OSError, RuntimeError, SafetensorError) as exc:   # torch.save on a full disk: RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"{previous.name} is intact" if previous else "no earlier checkpoint exists"
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC or shutil.disk_usage(folder).free < 1 << 20
        reason = "no space left on device" if full else str(exc).strip().splitlines()[0]
        raise CheckpointError(f"cannot write checkpoint {final}: {reason}; {kept}. Free some space and re-run "
                              "the same command to resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        if old.is_symlink():  # not ours (a user's link): never follow it into another folder
            continue
        (old / MARKER).unlink(missing_ok=True)  # first, so a half-deleted folder is never "complete"
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*folder.glob(".tmp-step-*"), *folder.glob(".tmp-old-*")]:
        if stale != tmp and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read weights {path}: {exc}") from None


def load_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise CheckpointError(f"cannot read training state {ckpt / 'state.pt'}: {exc}".splitlines()[0]) from None


def load_into(module: torch.nn.Module, weights: dict[str, torch.Tensor], *, what: str) -> None:
    """Load a state dict strictly; on mismatch raise a CheckpointError listing what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(f"{what} does not match this architecture: " + "; ".join(parts))
    module.load_state_dict(weights)

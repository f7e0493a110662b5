"""Run folders: the models they hold, loaded for sampling, reconstruction and evaluation.

A run folder (layout: :mod:`ddmi.checkpoint`) is enough to sample from: ``load_autoencoder``
gives the D2C-VAE of a VAE run or of an LDM run (its copy in ``RUN/vae``), ``load_diffusion``
the (EMA) diffusion model of an LDM run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ddmi import checkpoint as ckpt
from ddmi.devices import resolve_device
from ddmi.diffusion import LatentDiffusion
from ddmi.errors import CheckpointError
from ddmi.models import build_autoencoder, build_diffusion


def _vae_folder(run_dir: Path) -> Path:
    info = ckpt.read_run_info(run_dir)
    return run_dir / "vae" if info["stage"] == "ldm" else run_dir


def load_autoencoder(run_dir: str | Path, *, device: str | torch.device | None = None,
                     expect_domain: str | None = None) -> torch.nn.Module:
    """The trained D2C-VAE of a VAE run folder (latest checkpoint) or of an LDM run folder, in
    eval mode on ``device`` (default: ``cuda`` when available, else ``cpu``; see
    :func:`ddmi.devices.resolve_device`)."""
    device = resolve_device(device)
    run_dir = Path(run_dir)
    folder = _vae_folder(run_dir)
    cfg = ckpt.load_run_config(folder)
    if expect_domain is not None and cfg.domain != expect_domain:
        raise CheckpointError(f"{run_dir} is a {cfg.domain} model, not {expect_domain}")
    if folder == run_dir:
        latest = ckpt.latest_checkpoint(folder)
        if latest is None:
            raise CheckpointError(f"{run_dir} has no complete checkpoint yet")
        weights_path = latest / "model.safetensors"
    else:
        weights_path = folder / "model.safetensors"
    ae = build_autoencoder(cfg)
    ckpt.load_into(ae, ckpt.load_weights(weights_path), what=str(weights_path))
    ae.config = cfg
    return ae.to(device).eval()


def run_config(run_dir: str | Path) -> DictConfig:
    return ckpt.load_run_config(Path(run_dir))


def load_diffusion(run_dir: Path, latent_shape: tuple[int, ...], *, ema: bool = True,
                   device: str | torch.device | None = None) -> LatentDiffusion:
    """The (EMA) diffusion model of an LDM run folder's latest checkpoint, in eval mode on
    ``device`` (default: ``cuda`` when available, else ``cpu``)."""
    device = resolve_device(device)
    cfg = ckpt.load_run_config(run_dir)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint yet")
    model = build_diffusion(cfg, latent_shape)
    if ema and (latest / "ema.safetensors").is_file():
        weights = ckpt.load_weights(latest / "ema.safetensors")
        prefix = "ema_model."
        weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    else:
        weights = ckpt.load_weights(latest / "model.safetensors")
    ckpt.load_into(model, weights, what=f"{latest}")
    return model.to(device).eval()

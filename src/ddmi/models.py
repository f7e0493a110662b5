"""Whole models built from a config, through the domain registry: the stage-1 autoencoder, the
stage-2 denoiser and diffusion model, the discriminator; and their parameter counts.

``build_autoencoder(cfg)`` returns a module with ``encode(x) -> DiagonalGaussian``,
``decode(z) -> Field``, ``latent_shape`` and the stage-1 loss as ``forward``.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from ddmi import domains
from ddmi.diffusion import LatentDiffusion


def build_autoencoder(cfg: DictConfig) -> nn.Module:
    return domains.get(cfg.domain).build_autoencoder(cfg)


def build_denoiser(cfg: DictConfig, latent_shape: tuple[int, ...]) -> nn.Module:
    return domains.get(cfg.domain).build_denoiser(cfg, latent_shape)


def build_discriminator(cfg: DictConfig) -> nn.Module:
    return domains.get(cfg.domain).build_discriminator(cfg)


def build_diffusion(cfg: DictConfig, latent_shape: tuple[int, ...], latent_scale=1.0,
                    latent_shift=0.0) -> LatentDiffusion:
    """The diffusion model of ``cfg``; ``latent_scale``/``latent_shift``: scalars or (C,) tensors
    (measured from the training latents, see :func:`ddmi.training.ldm_task.measure_latent_stats`)."""
    return LatentDiffusion(build_denoiser(cfg, latent_shape), latent_channels=latent_shape[0],
                           mixed_prediction=cfg.ldm.mixed_prediction, mixed_init=cfg.ldm.mixed_init,
                           latent_scale=latent_scale, latent_shift=latent_shift)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(cfg: DictConfig, *, include_ldm: bool = True) -> dict[str, int]:
    """Parameters of each component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        ae = build_autoencoder(cfg)
        counts = {name: count_parameters(m) for name, m in ae.components().items()}
        counts["vae_total"] = count_parameters(ae.vae)
        if cfg.gan.enabled:
            counts["discriminator"] = count_parameters(build_discriminator(cfg))
        if include_ldm:
            counts["denoiser"] = count_parameters(build_denoiser(cfg, ae.latent_shape))
    return counts

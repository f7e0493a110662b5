"""Whole models built from a config: the stage-1 autoencoder of each domain.

``build_autoencoder(cfg)`` returns a module with ``encode(x) -> DiagonalGaussian``,
``decode(z) -> Field``, ``latent_shape`` and ``training_loss(batch, ...)``.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from ddmi.domains.image.model import ImageAutoencoder


def _occupancy(cfg: DictConfig) -> nn.Module:
    from ddmi.domains.occupancy.model import OccupancyAutoencoder
    return OccupancyAutoencoder(cfg)


def _nerf(cfg: DictConfig) -> nn.Module:
    from ddmi.domains.nerf.model import NeRFAutoencoder
    return NeRFAutoencoder(cfg)



def _video(cfg: DictConfig) -> nn.Module:
    from ddmi.domains.video.model import VideoAutoencoder
    return VideoAutoencoder(cfg)



AUTOENCODERS = {"image": ImageAutoencoder, "occupancy": _occupancy, "nerf": _nerf, "video": _video}


def build_autoencoder(cfg: DictConfig) -> nn.Module:
    return AUTOENCODERS[cfg.domain](cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(cfg: DictConfig, *, include_ldm: bool = True) -> dict[str, int]:
    """Parameters of each component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        ae = build_autoencoder(cfg)
        counts = {name: count_parameters(m) for name, m in ae.components().items()}
        counts["vae_total"] = count_parameters(ae.vae)
        if cfg.gan.enabled:
            from ddmi.gan import build_discriminator
            counts["discriminator"] = count_parameters(build_discriminator(cfg))
        if include_ldm:
            from ddmi.ldm import build_denoiser
            counts["denoiser"] = count_parameters(build_denoiser(cfg, ae.latent_shape))
    return counts

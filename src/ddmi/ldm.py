"""Building and loading the stage-2 latent diffusion model."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ddmi import checkpoint as ckpt
from ddmi.devices import resolve_device
from ddmi.diffusion import LatentDiffusion
from ddmi.errors import CheckpointError
from ddmi.nn.unet import UNet


def build_denoiser(cfg: DictConfig, latent_shape: tuple[int, ...]) -> UNet:
    u = cfg.ldm.unet
    c = latent_shape[0]
    kw = dict(in_channels=c, out_channels=c, model_channels=u.model_channels,
              channel_mult=tuple(u.channel_mult), num_res_blocks=u.num_res_blocks,
              attention_resolutions=tuple(u.attention_resolutions),
              num_head_channels=u.num_head_channels, dropout=u.dropout,
              norm_groups=min(32, u.model_channels))
    if cfg.domain == "video":   # (B, C, N) tokens of three planes: the tri-plane UNet
        from ddmi.nn.triplane_unet import TriplaneUNet
        from ddmi.domains.video.model import video_spec
        return TriplaneUNet(plane_shapes=video_spec(cfg).plane_shapes(), cross_heads=cfg.video.unet_cross_heads, **kw)
    return UNet(**kw)


def build_diffusion(cfg: DictConfig, latent_shape: tuple[int, ...], latent_scale=1.0,
                    latent_shift=0.0) -> LatentDiffusion:
    """The diffusion model of ``cfg``; ``latent_scale``/``latent_shift``: scalars or (C,) tensors
    (measured from the training latents, see :func:`ddmi.stage2.measure_latent_stats`)."""
    return LatentDiffusion(build_denoiser(cfg, latent_shape), latent_channels=latent_shape[0],
                           mixed_prediction=cfg.ldm.mixed_prediction, mixed_init=cfg.ldm.mixed_init,
                           latent_scale=latent_scale, latent_shift=latent_shift)


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


@torch.no_grad()
def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of the same shape."""
    af, bf = a.flatten(), b.flatten()
    cos = (af @ bf / (af.norm() * bf.norm())).clamp(-1, 1)
    theta = torch.arccos(cos)
    if theta.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)

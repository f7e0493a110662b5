"""The image domain's D2C-VAE: a conv VAE to one latent plane, HDBPE planes, the CFC styled MLP."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

import ddmi.domains.image.pixels as image_domain
from ddmi.fields import Field, ImageMLP, ImageMLPSpec
from ddmi.nn.spectral import SpectralRegularizer
from ddmi.vae.planes import ConvVAE, ConvVAESpec
from ddmi.vae.posterior import DiagonalGaussian


def vae_spec(cfg: DictConfig) -> ConvVAESpec:
    v = cfg.vae
    return ConvVAESpec(
        in_channels=3, resolution=cfg.data.resolution, ch=v.ch, ch_mult=tuple(v.ch_mult),
        num_res_blocks=v.num_res_blocks, z_channels=v.z_channels, embed_dim=v.embed_dim,
        attn_resolutions=tuple(v.attn_resolutions), hdbpe_resolutions=tuple(v.hdbpe_resolutions),
        plane_channels=v.plane_channels, mid_attn_heads=v.mid_attn_heads, dropout=v.dropout,
    )


def fresh_spectral_state(spec: ConvVAESpec, power_iters: int) -> dict[str, torch.Tensor]:
    """The buffers of a fresh :class:`SpectralRegularizer` of ``ConvVAE(spec)`` (ddmi training
    state that official checkpoints do not carry; ``initialised`` is False, so it warms up as in a
    new run). The VAE is built on the meta device: no memory."""
    with torch.device("meta"):
        vae = ConvVAE(spec)
    return dict(SpectralRegularizer(vae, power_iters=power_iters).state_dict())


class ImageAutoencoder(nn.Module):
    """The image D2C-VAE: conv VAE -> 3 multi-scale planes -> CFC styled MLP -> RGB."""

    domain = "image"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.spec = vae_spec(cfg)
        self.resolution = cfg.data.resolution
        self.multiscale = cfg.loss.multiscale
        self.vae = ConvVAE(self.spec)
        self.mlp = ImageMLP(ImageMLPSpec(
            plane_channels=self.spec.plane_channels, num_scales=len(self.spec.plane_resolutions),
            hidden=cfg.mlp.hidden, scale_embed_dim=cfg.mlp.scale_embed_dim,
            noise_injection=cfg.image.noise_injection))
        self.spectral = SpectralRegularizer(self.vae, power_iters=cfg.loss.sn_power_iters) \
            if cfg.loss.sn_reg else None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.spec.latent_resolution
        return (self.spec.embed_dim, r, r)

    def components(self) -> dict[str, nn.Module]:
        return {"encoder": self.vae.encoder, "decoder": self.vae.decoder, "mlp": self.mlp}

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """``images (B, 3, R, R)`` in [-1, 1] (resized to the training resolution if needed)."""
        return self.vae.encode(image_domain.resize(images, self.resolution))

    def decode(self, z: torch.Tensor, *, chunk: int = 8192) -> Field:
        """Latent ``(B, *latent_shape)`` -> a ``Field`` (render it, or query it at coordinates
        ``(B, N, 2)`` in [-1, 1] (x, y) with ``field.query(coords, si=(B,) scales)``; with
        ``image.noise_injection`` also ``noise=`` a generator, see :meth:`ImageMLP.forward`)."""
        planes = self.vae.decode(z)
        si = torch.ones(z.shape[0], device=z.device)
        return Field(planes, self.mlp, {"si": si}, chunk=chunk)

    def render(self, z: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        return image_domain.render_image(self.decode(z), resolution or self.resolution,
                                         train_resolution=self.resolution)

    def random_inputs(self, generator: torch.Generator, n: int, *, hflip: bool) -> dict:
        """All randomness of one training step for a global batch of ``n`` images."""
        rand = image_domain.draw_training_randomness(generator, n, multiscale=self.multiscale)
        if not hflip:
            rand["flip"] = torch.zeros(n, dtype=torch.bool)
        rand["noise"] = torch.randn((n, *self.latent_shape), generator=generator)
        return rand

    def forward(self, images: torch.Tensor, rand: dict, *, kl_weight: float, sn_weight: float,
                perceptual: nn.Module | None = None, perceptual_weight: float = 1.0,
                adversary=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage-1 loss on ``images (B, 3, S, S)`` in [-1, 1] with randomness ``rand``.

        L1 summed over the target pixels and channels, averaged over the batch; plus
        ``kl_weight * KL`` (summed over the latent, batch mean); plus ``sn_weight *`` the spectral
        regulariser; plus ``perceptual_weight * LPIPS`` when a perceptual network is given; plus
        ``adversary(fake, real, si) -> (loss, logs)`` on the ``(B, 3, R, R)`` images when given
        (the generator side of adversarial fine-tuning, :mod:`ddmi.training.adversarial`).
        """
        pred, targets, si, posterior = self.reconstruct(images, rand)
        l1 = (pred - targets).abs().flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = l1 + kl_weight * kl
        logs = {"l1": l1.detach(), "kl": kl.detach()}
        if perceptual is not None:
            lp = perceptual(self.as_images(pred), self.as_images(targets)).mean()
            loss = loss + perceptual_weight * lp
            logs["lpips"] = lp.detach()
        if adversary is not None:
            adv, adv_logs = adversary(self.as_images(pred), self.as_images(targets), si)
            loss = loss + adv
            logs.update(adv_logs)
        if self.spectral is not None and sn_weight > 0:
            sn = self.spectral(self.vae)
            loss = loss + sn_weight * sn
            logs["sn"] = sn.detach()
        with torch.no_grad():
            mse = (pred.detach().clamp(-1, 1) - targets).pow(2).mean()
            logs["psnr"] = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
        return loss, logs


    def reconstruct(self, images: torch.Tensor, rand: dict):
        """The training view of ``images`` and its reconstruction (randomness ``rand``).

        Returns ``pred, targets`` ``(B, R*R, 3)`` (row-major pixels of the R x R target crop),
        ``si (B,)`` and the posterior.
        """
        images = image_domain.apply_flips(images, rand["flip"])
        enc_in, coords, targets, si = image_domain.training_views(
            images, self.resolution, zoom=rand["zoom"], offsets=rand["offsets"])
        posterior = self.vae.encode(enc_in)
        z = posterior.mean + posterior.std * rand["noise"]
        pred = self.mlp(self.vae.decode(z), coords, si)                       # (B, N, 3)
        return pred, targets, si, posterior

    def adversarial_views(self, images: torch.Tensor, rand: dict):
        """``(fake, real, cond)`` as the critic sees them: ``(B, 3, R, R)`` reconstructions and
        targets, and the scale injection ``si (B,)``."""
        pred, targets, si, _ = self.reconstruct(images, rand)
        return self.as_images(pred), self.as_images(targets), si

    def as_images(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, R*R, 3)`` per-pixel values -> ``(B, 3, R, R)``."""
        r = self.resolution
        return points.transpose(1, 2).reshape(-1, 3, r, r)

    def encoder_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder inputs of a batch (stage-2 latent cache): the images and their mirrors."""
        x = image_domain.resize(images, self.resolution)
        return [x, x.flip(-1)]

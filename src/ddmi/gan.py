"""Adversarial fine-tuning of the image D2C-VAE (spec section 4, "GAN"; presets ``*-gan``).

A phase-two run starts from a phase-one VAE run (``init=VAE_RUN_DIR``: weights only; the
optimiser and the learning rate come from this run's config) and alternates, per optimiser step,

* a **generator** step: the stage-1 loss (L1 + KL + spectral regulariser [+ LPIPS]) plus
  ``disc_weight * -mean D(fake) + feature_weight * feature matching``; the discriminator's
  weights are read as constants, so no gradient reaches them;
* a **discriminator** step: the hinge loss on real crops and reconstructions computed without
  gradient (detached; the official video step forgets to: spec 12.2.10).

The discriminator sees RGB plus a constant 4th channel holding the scale injection ``si``.
Before ``gan.start_step`` every step is a generator step without the adversarial term. One
AdamW holds both networks in two parameter groups (the discriminator's with ``gan.disc_betas``,
(0.5, 0.9) officially): parameters without a gradient in a step are left untouched by AdamW, and
both networks and the optimiser state are checkpointed and resumed together.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call

from . import checkpoint as ckpt
from .errors import CheckpointError, ConfigError
from .losses.adversarial import feature_matching_loss, generator_loss, hinge_d_loss
from .nn.discriminator import PatchDiscriminator
from .stage1 import VAETask


def with_scale_channel(images: torch.Tensor, si: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)``, ``si (B,)`` -> ``(B, 4, H, W)`` with ``si`` as a constant 4th channel."""
    b, _, h, w = images.shape
    return torch.cat([images, si.to(images.dtype)[:, None, None, None].expand(b, 1, h, w)], dim=1)


def phase(gc: DictConfig, step: int) -> str:
    """``"generator"`` or ``"discriminator"``: alternating from ``gc.start_step`` on."""
    if step < gc.start_step:
        return "generator"
    return "generator" if (step - gc.start_step) % 2 == 0 else "discriminator"


class AdversarialForward(nn.Module):
    """DDP-wrappable loss of both phases: ``forward(images, rand, phase=..., ...) -> (loss, logs)``."""

    def __init__(self, autoencoder: nn.Module, discriminator: nn.Module, perceptual: nn.Module | None,
                 perceptual_weight: float, gc: DictConfig):
        super().__init__()
        self.ae = autoencoder
        self.disc = discriminator
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.disc_weight = gc.disc_weight
        self.feature_weight = gc.feature_weight
        if perceptual is not None:
            perceptual.requires_grad_(False)

    def forward(self, images, rand, *, phase: str, adversarial: bool, kl_weight: float, sn_weight: float):
        if phase == "discriminator":
            with torch.no_grad():
                pred, targets, si, _ = self.ae.reconstruct(images, rand)
            real_logits, _ = self.disc(with_scale_channel(self.ae.as_images(targets), si))
            fake_logits, _ = self.disc(with_scale_channel(self.ae.as_images(pred), si))
            loss = hinge_d_loss(real_logits, fake_logits)
            return loss, {"d_hinge": loss.detach(), "d_real": real_logits.detach().mean(),
                          "d_fake": fake_logits.detach().mean()}
        return self.ae(images, rand, kl_weight=kl_weight, sn_weight=sn_weight, perceptual=self.perceptual,
                       perceptual_weight=self.perceptual_weight,
                       adversary=self._generator_terms if adversarial else None)

    def _generator_terms(self, fake: torch.Tensor, real: torch.Tensor, si: torch.Tensor):
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        fake_logits, fake_feats = functional_call(self.disc, frozen, (with_scale_channel(fake, si),))
        with torch.no_grad():
            _, real_feats = self.disc(with_scale_channel(real, si))
        g = generator_loss(fake_logits)
        fm = feature_matching_loss(real_feats, fake_feats)
        return self.disc_weight * g + self.feature_weight * fm, {"g_adv": g.detach(), "g_fm": fm.detach()}


def load_init_weights(autoencoder: nn.Module, cfg: DictConfig, init: Path) -> str:
    """Load the latest weights of the VAE run ``init`` into ``autoencoder`` (weights only)."""
    info = ckpt.read_run_info(init)
    if info["stage"] != "vae":
        raise ConfigError(f"init={init} is a {info['stage']} run; it must be a `ddmi train vae` run")
    other = ckpt.load_run_config(init)
    if other.domain != cfg.domain:
        raise ConfigError(f"init={init} is a {other.domain} model; this config is for {cfg.domain}")
    latest = ckpt.latest_checkpoint(init)
    if latest is None:
        raise CheckpointError(f"init={init} has no complete checkpoint yet")
    ckpt.load_into(autoencoder, ckpt.load_weights(latest / "model.safetensors"),
                   what=f"init={init} ({latest.name})")
    return latest.name


class AdversarialVAETask(VAETask):
    """Stage 1 with a discriminator (``gan.enabled``): see the module docstring."""

    def __init__(self, cfg: DictConfig, *, log=print):
        super().__init__(cfg, log=log)
        gc = cfg.gan
        self.discriminator = PatchDiscriminator(4, gc.disc_channels, gc.disc_layers)
        self.module = AdversarialForward(self.autoencoder, self.discriminator, self.module.perceptual,
                                         cfg.loss.lpips_weight, gc)

    def parameters(self):
        return [p for m in (self.autoencoder, self.discriminator) for p in m.parameters() if p.requires_grad]

    def param_groups(self):
        return [{"params": [p for p in self.autoencoder.parameters() if p.requires_grad]},
                {"params": list(self.discriminator.parameters()), "betas": tuple(self.cfg.gan.disc_betas)}]

    def loss_kwargs(self, step):
        kw = super().loss_kwargs(step)
        gc = self.cfg.gan
        return {**kw, "phase": phase(gc, step), "adversarial": step >= gc.start_step}

    def weights(self):
        return {**super().weights(), "discriminator": ckpt.state_dict_for_saving(self.discriminator)}

    def load_weights(self, weights):
        super().load_weights(weights)
        if "discriminator" not in weights:
            raise CheckpointError("the checkpoint has no discriminator weights (not a gan.enabled run)")
        ckpt.load_into(self.discriminator, weights["discriminator"], what="checkpoint discriminator")

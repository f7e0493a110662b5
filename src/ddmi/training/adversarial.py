"""Adversarial fine-tuning of the D2C-VAE (docs/official-code.md §4, "GAN"; presets ``*-gan``).

A phase-two run starts from a phase-one VAE run (``init=VAE_RUN_DIR``: weights only; the
optimiser and the learning rate come from this run's config) and alternates, per optimiser step,

* a **generator** step: the stage-1 loss (L1 + KL + spectral regulariser [+ LPIPS]) plus
  ``generator_factor * (disc_weight * -mean D(fake) + feature_weight * feature matching)``; the
  discriminator's weights are read as constants, so no gradient reaches them;
* a **discriminator** step: the hinge loss on real inputs and reconstructions computed without
  gradient (detached; the official video step forgets to: docs/official-code.md §12.2.10).

Per domain (the domain's ``build_discriminator`` and the autoencoder's ``adversarial_views``):

* **image**: one 2-D PatchGAN on the ``R x R`` crop; its 4th input channel is the constant scale
  injection ``si`` of the crop;
* **video**: a 2-D PatchGAN on one random frame per clip (the LPIPS term's frame) plus a 3-D
  PatchGAN on the whole clip (:class:`~ddmi.nn.discriminator.VideoDiscriminator`), RGB only (the
  video field has no scale injection). The generator terms and the hinge losses of the two
  networks are summed.

Before ``gan.start_step`` every step is a generator step without the adversarial term. One
AdamW holds both networks in two parameter groups (the discriminator's with ``gan.disc_betas``,
(0.5, 0.9) officially): parameters without a gradient in a step are left untouched by AdamW, and
both networks and the optimiser state are checkpointed and resumed together.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call

from ddmi import checkpoint as ckpt
from ddmi.errors import CheckpointError
from ddmi.losses.adversarial import feature_matching_loss, generator_loss, hinge_d_loss
from ddmi.training.vae_task import VAETask


def phase(gc: DictConfig, step: int) -> str:
    """``"generator"`` or ``"discriminator"``: alternating from ``gc.start_step`` on."""
    if step < gc.start_step:
        return "generator"
    return "generator" if (step - gc.start_step) % 2 == 0 else "discriminator"


class AdversarialForward(nn.Module):
    """DDP-wrappable loss of both phases: ``forward(images, rand, phase=..., ...) -> (loss, logs)``.

    The domain-specific parts are :meth:`reconstructions` (detached fakes, reals and the
    discriminator's condition) and :meth:`critic` (logits of every discriminator + features).
    """

    def __init__(self, autoencoder: nn.Module, discriminator: nn.Module, perceptual: nn.Module | None,
                 perceptual_weight: float, gc: DictConfig):
        super().__init__()
        self.ae = autoencoder
        self.disc = discriminator
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.disc_weight = gc.disc_weight
        self.feature_weight = gc.feature_weight
        self.generator_factor = gc.generator_factor
        if perceptual is not None:
            perceptual.requires_grad_(False)

    def reconstructions(self, images, rand):
        """``(fake, real, cond)`` as the critic sees them (the autoencoder's ``adversarial_views``)."""
        return self.ae.adversarial_views(images, rand)

    def critic(self, x, cond, params=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits of every discriminator and their concatenated features; with ``params``, the
        discriminator runs with those weights (:func:`torch.func.functional_call`)."""
        return self.disc(x, cond) if params is None else functional_call(self.disc, params, (x, cond))

    def forward(self, images, rand, *, phase: str, adversarial: bool, kl_weight: float, sn_weight: float):
        if phase == "discriminator":
            with torch.no_grad():                       # detached reconstructions (docs/official-code.md §12.2.10)
                fake, real, cond = self.reconstructions(images, rand)
            real_logits, _ = self.critic(real, cond)
            fake_logits, _ = self.critic(fake, cond)
            loss = sum(hinge_d_loss(r, f) for r, f in zip(real_logits, fake_logits))
            return loss, {"d_hinge": loss.detach(),
                          "d_real": torch.stack([r.detach().mean() for r in real_logits]).mean(),
                          "d_fake": torch.stack([f.detach().mean() for f in fake_logits]).mean()}
        return self.ae(images, rand, kl_weight=kl_weight, sn_weight=sn_weight, perceptual=self.perceptual,
                       perceptual_weight=self.perceptual_weight,
                       adversary=self._generator_terms if adversarial else None)

    def _generator_terms(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor):
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        fake_logits, fake_feats = self.critic(fake, cond, frozen)
        with torch.no_grad():
            _, real_feats = self.critic(real, cond)
        g = sum(generator_loss(f) for f in fake_logits)
        fm = feature_matching_loss(real_feats, fake_feats)
        loss = self.generator_factor * (self.disc_weight * g + self.feature_weight * fm)
        return loss, {"g_adv": g.detach(), "g_fm": fm.detach()}


class AdversarialVAETask(VAETask):
    """Stage 1 with the domain's discriminator (``gan.enabled``): see the module docstring."""

    def __init__(self, cfg: DictConfig, *, log=print):
        super().__init__(cfg, log=log)
        self.discriminator = self.domain.build_discriminator(cfg)
        self.module = AdversarialForward(self.autoencoder, self.discriminator, self.module.perceptual,
                                         cfg.loss.lpips_weight, cfg.gan)

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

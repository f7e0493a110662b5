"""Adversarial losses of the D2C-VAE fine-tuning (docs/official-code.md §4, "GAN").

* discriminator: ``0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))`` (hinge), on
  detached reconstructions;
* generator: ``-mean D(fake)`` plus feature matching, the sum over the discriminator's
  intermediate activations of the mean absolute difference between real and fake.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def feature_matching_loss(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of ``mean |real - fake|``; the real features are treated as constants."""
    if len(real_feats) != len(fake_feats):
        raise ValueError(f"feature lists differ in length: {len(real_feats)} vs {len(fake_feats)}")
    return sum((f - r.detach()).abs().mean() for r, f in zip(real_feats, fake_feats))

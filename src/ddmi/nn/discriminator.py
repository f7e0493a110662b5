"""PatchGAN discriminators for adversarial fine-tuning of the D2C-VAE (spec section 4, "GAN").

The official discriminator (pix2pix's ``NLayerDiscriminator``) normalises with SyncBatchNorm,
whose statistics depend on the global batch (one image per GPU in ``afhq_gan``). We use
GroupNorm instead: the same parameters, but batch-independent, so a run behaves the same on one
CPU process and on many GPUs, at any per-process batch size.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """2-D PatchGAN: ``x (B, in_channels, H, W)`` -> ``(logits (B, 1, h, w), features)``.

    conv4 s2 (in -> ch), LeakyReLU(0.2); ``layers - 1`` x [conv4 s2, norm, LeakyReLU] doubling the
    width (at most 8 ch); conv4 s1, norm, LeakyReLU; conv4 s1 -> 1 logit per patch. ``features``
    are the activations after every LeakyReLU (for feature matching). Weights ~ N(0, 0.02), as
    in the official code. For images the 4th input channel is the constant scale injection.
    """

    def __init__(self, in_channels: int = 4, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2))]
        ch = channels
        for i in range(1, layers):
            nxt = channels * min(2 ** i, 8)
            blocks.append(nn.Sequential(nn.Conv2d(ch, nxt, 4, 2, 1, bias=False), _norm(nxt), nn.LeakyReLU(0.2)))
            ch = nxt
        nxt = channels * min(2 ** layers, 8)
        blocks.append(nn.Sequential(nn.Conv2d(ch, nxt, 4, 1, 1, bias=False), _norm(nxt), nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(nxt, 1, 4, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.head(x), feats

"""PatchGAN discriminators for adversarial fine-tuning of the D2C-VAE (docs/official-code.md §4, "GAN").

* :class:`PatchDiscriminator`: the 2-D PatchGAN (images; single frames of a video);
* :class:`PatchDiscriminator3D`: the same recipe with ``Conv3d`` over a whole clip;
* :class:`VideoDiscriminator`: the pair the video domain trains (one random frame per clip for
  the 2-D network, the clip for the 3-D one).

The official discriminators (pix2pix's ``NLayerDiscriminator``) normalise with SyncBatchNorm,
whose statistics depend on the global batch (one image per GPU in ``afhq_gan``, two clips per
GPU for SkyTimelapse). We use GroupNorm instead: the same parameters, but batch-independent, so a
run behaves the same on one CPU process and on many GPUs, at any per-process batch size.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def _init_weights(module: nn.Module) -> None:
    """Convolutions ~ N(0, 0.02) with zero bias; norm scales ~ N(1, 0.02) (the official init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``x (B, in_channels, H, W)`` -> ``(logits (B, 1, h, w), features)`` (``dims=2``),
    or with ``dims=3`` clips ``(B, in_channels, T, H, W)`` -> ``(logits (B, 1, t, h, w), features)``.

    conv4 s2 (in -> ch), LeakyReLU(0.2); ``layers - 1`` x [conv4 s2, norm, LeakyReLU] doubling the
    width (at most 8 ch); conv4 s1, norm, LeakyReLU; conv4 s1 -> 1 logit per patch. ``features``
    are the activations after every LeakyReLU (for feature matching). Weights ~ N(0, 0.02), as
    in the official code. For images the 4th input channel is the constant scale injection.

    The 3-D network pads by 2 (as the official 3-D network) rather than 1, so that short clips
    keep a non-empty output: with ``layers`` = 3 a 16-frame clip gives 5 logits along time, and an
    8-frame clip with ``layers`` = 2 gives 5 as well (padding 1 would leave nothing after the last
    4-wide stride-1 convolutions).
    """

    def __init__(self, in_channels: int = 4, channels: int = 64, layers: int = 3, *, dims: int = 2):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        pad = 1 if dims == 2 else 2
        blocks: list[nn.Module] = [nn.Sequential(conv(in_channels, channels, 4, 2, pad), nn.LeakyReLU(0.2))]
        ch = channels
        for i in range(1, layers):
            nxt = channels * min(2 ** i, 8)
            blocks.append(nn.Sequential(conv(ch, nxt, 4, 2, pad, bias=False), _norm(nxt), nn.LeakyReLU(0.2)))
            ch = nxt
        nxt = channels * min(2 ** layers, 8)
        blocks.append(nn.Sequential(conv(ch, nxt, 4, 1, pad, bias=False), _norm(nxt), nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.head = conv(nxt, 1, 4, 1, pad)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.head(x), feats


def with_scale_channel(images: torch.Tensor, si: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)``, ``si (B,)`` -> ``(B, 4, H, W)`` with ``si`` as a constant 4th channel."""
    b, _, h, w = images.shape
    return torch.cat([images, si.to(images.dtype)[:, None, None, None].expand(b, 1, h, w)], dim=1)


class ScaleConditionedDiscriminator(PatchDiscriminator):
    """The image critic: a 2-D PatchGAN on RGB + the scale injection ``si`` as a 4th channel.
    ``forward(images (B, 3, H, W), si (B,)) -> ([logits], features)`` (same weights and keys as
    :class:`PatchDiscriminator` with 4 input channels)."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__(4, channels, layers)

    def forward(self, images: torch.Tensor, si: torch.Tensor):
        logits, feats = super().forward(with_scale_channel(images, si))
        return [logits], feats


class PatchDiscriminator3D(PatchDiscriminator):
    """The 3-D PatchGAN on clips (:class:`PatchDiscriminator` with ``dims=3``)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__(in_channels, channels, layers, dims=3)


class VideoDiscriminator(nn.Module):
    """The video domain's two discriminators (docs/official-code.md §4, ``LPIPSWithDiscriminator3D``).

    ``forward(clips (B, 3, T, H, W), frame (B,) long)`` -> ``(logits, features)``: ``logits`` is
    ``[frame logits (B, 1, h, w), clip logits (B, 1, t, h, w)]``; ``features`` the 2-D network's
    activations followed by the 3-D network's (feature matching pairs them layer by layer). The
    2-D network sees frame ``frame[b]`` of clip ``b``. RGB only: the video field has no scale
    injection, so there is no 4th channel.
    """

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        self.frame = PatchDiscriminator(3, channels, layers)
        self.clip = PatchDiscriminator3D(3, channels, layers)

    def forward(self, clips: torch.Tensor, frame: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        assert clips.ndim == 5 and clips.shape[1] == 3, f"expected clips (B, 3, T, H, W), got {tuple(clips.shape)}"
        frames = clips[torch.arange(clips.shape[0], device=clips.device), :, frame.to(clips.device)]
        logits_2d, feats_2d = self.frame(frames)
        logits_3d, feats_3d = self.clip(clips)
        return [logits_2d, logits_3d], feats_2d + feats_3d

"""The tri-plane UNet denoiser of the video LDM (docs/official-code.md §5.2, ``UNetModel_Triplane``).

The latent ``(B, C, N)`` holds three planes flattened row-major and concatenated on the token axis
(``[xy | xt | yt]``, shapes ``plane_shapes``; see :mod:`ddmi.domains.video.model`). Every input, middle
and output block of one ADM UNet (:class:`ddmi.nn.unet.UNet`) is applied to each plane with
**shared weights** (the time planes are down/upsampled on both axes like the xy plane); after
each block the three planes are flattened, concatenated and mixed by a 1-D multi-head
self-attention over all their tokens (:class:`ddmi.vae.spacetime.CrossPlaneAttention`: GroupNorm
pre-norm, residual, zero-initialised output), then split back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddmi.nn.unet import UNet, timestep_embedding


class TriplaneUNet(UNet):
    """``forward(x (B, C, N), t (B,)) -> (B, C, N)``; ``plane_shapes``: ``[(rows, cols)] * 3``."""

    def __init__(self, *, plane_shapes: Sequence[tuple[int, int]], cross_heads: int = 16, **unet_kwargs):
        super().__init__(**unet_kwargs)
        from ddmi.vae.spacetime import CrossPlaneAttention
        self.plane_shapes = [tuple(s) for s in plane_shapes]
        factor = 2 ** (len(self.channel_mult) - 1)
        for r, c in self.plane_shapes:
            assert r % factor == 0 and c % factor == 0, (
                f"plane {r}x{c} is not divisible by the UNet's downsampling factor {factor}")
        mc, nrb = self.model_channels, unet_kwargs.get("num_res_blocks", 2)
        widths = [mc]
        for level, mult in enumerate(self.channel_mult):
            widths += [mc * mult] * nrb
            if level != len(self.channel_mult) - 1:
                widths.append(mc * mult)
        mid = widths[-1]
        out_widths = [mc * mult for mult in reversed(self.channel_mult) for _ in range(nrb + 1)]

        def cross(ch: int) -> nn.Module:
            return CrossPlaneAttention(ch, min(cross_heads, ch), zero_init=True)

        self.input_cross = nn.ModuleList([cross(ch) for ch in widths])
        self.middle_cross = cross(mid)
        self.output_cross = nn.ModuleList([cross(ch) for ch in out_widths])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        from ddmi.vae.spacetime import flatten_planes, split_planes
        assert x.ndim == 3 and x.shape[1] == self.in_channels, (
            f"expected x of shape (B, {self.in_channels}, N), got {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        planes = split_planes(x, self.plane_shapes)
        skips = []
        for block, cross in zip(self.input_blocks, self.input_cross):
            planes = cross([self._run(block, p, emb) for p in planes])
            skips.append(planes)
        planes = self.middle_cross([self._run(self.middle_block, p, emb) for p in planes])
        for block, cross in zip(self.output_blocks, self.output_cross):
            skip = skips.pop()
            planes = cross([self._run(block, torch.cat([p, s], dim=1), emb) for p, s in zip(planes, skip)])
        return flatten_planes([self.out(p) for p in planes])

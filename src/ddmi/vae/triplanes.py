"""The tri-plane D2C-VAE (occupancy / NeRF, spec 3.2) and the occupancy CFC MLP.

Shapes (``f = 2 ** (len(ch_mult) - 1)``, plane order and layout of :mod:`ddmi.vae.triplane_coords`):

- encoder input: three ``in_channels`` planes ``(B, 3, in_channels, R, R)`` (the PointNet's);
- posterior mean / logvar: ``(B, 3 * embed_dim, R/f, R/f)``, the planes stacked on channels as
  ``[xy | xz | yz]`` (this is also the LDM tensor: no re-ordering anywhere);
- decoded planes (HDBPE): a list, coarse to fine, of ``(B, 3, plane_channels, r, r)`` for every
  ``r`` in ``sorted(hdbpe_resolutions) + [R]``.

The conv weights are shared by the three planes (they run folded into the batch); at every
resolution in ``inter_attn_resolutions`` and in the middle block, a :class:`CrossPlaneBlock`
concatenates the three planes on channels and mixes them (ResBlock -> attention -> ResBlock over
``3C`` channels) at aligned pixel indices. Each plane has its own 1x1 ``quant_conv`` and
``post_quant_conv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddmi.nn.blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from ddmi.vae.triplane_coords import fold, unfold
from ddmi.vae.planes import ConvVAE, ConvVAESpec


@dataclass
class TriplaneVAESpec(ConvVAESpec):
    inter_attn_resolutions: tuple[int, ...] = ()


class CrossPlaneBlock(nn.Module):
    """``(B*3, C, H, W)`` -> concatenate the planes of each sample on channels ``(B, 3C, H, W)``
    -> ResBlock -> attention -> ResBlock -> split back to ``(B*3, C, H, W)``."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        c3 = 3 * channels
        self.body = nn.Sequential(ResnetBlock(c3, c3, dropout), AttnBlock(c3), ResnetBlock(c3, c3, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bk, c, h, w = x.shape
        return self.body(x.reshape(bk // 3, 3 * c, h, w)).reshape(bk, c, h, w)


def _mid(block_in: int, s: TriplaneVAESpec) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(block_in, block_in, s.dropout), AttnBlock(block_in, s.mid_attn_heads),
                         ResnetBlock(block_in, block_in, s.dropout), CrossPlaneBlock(block_in, s.dropout))


class TriplaneEncoder(nn.Module):
    """Planes ``(B, 3, in, R, R)`` -> posterior parameters ``(B, 2 * 3 * embed_dim, R/f, R/f)``
    ordered ``[mean_xy, mean_xz, mean_yz, logvar_xy, logvar_xz, logvar_yz]``."""

    def __init__(self, spec: TriplaneVAESpec):
        super().__init__()
        s = spec
        self.conv_in = nn.Conv2d(s.in_channels, s.ch, 3, padding=1)
        blocks: list[nn.Module] = []
        res, block_in = s.resolution, s.ch
        for level, mult in enumerate(s.ch_mult):
            block_out = s.ch * mult
            for _ in range(s.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, s.dropout))
                block_in = block_out
                if res in s.attn_resolutions:
                    blocks.append(AttnBlock(block_in))
            if res in s.inter_attn_resolutions:
                blocks.append(CrossPlaneBlock(block_in, s.dropout))
            if level != len(s.ch_mult) - 1:
                blocks.append(Downsample(block_in))
                res //= 2
        self.down = nn.Sequential(*blocks)
        self.mid = _mid(block_in, s)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * s.z_channels, 3, padding=1)
        self.quant_conv = nn.ModuleList([nn.Conv2d(2 * s.z_channels, 2 * s.embed_dim, 1) for _ in range(3)])

    @torch.no_grad()
    def init_posterior(self, *, logvar: float) -> None:
        """Start the posterior means at the prior's scale and their noise small (the NeRF domain
        uses it; docs/nerf.md, "Colour through the latent").

        ``conv_out`` and every ``quant_conv`` get unit-gain weights (``std = 1 / sqrt(fan_in)``,
        zero bias), so the posterior means of different inputs start about one prior standard
        deviation apart instead of ~0.2; the log-variance half of each ``quant_conv`` starts as
        the constant ``logvar``."""
        for conv in [self.conv_out, *self.quant_conv]:
            nn.init.normal_(conv.weight, std=conv.weight[0].numel() ** -0.5)
            nn.init.zeros_(conv.bias)
        for conv in self.quant_conv:
            half = conv.out_channels // 2                     # output channels: [mean | logvar]
            conv.weight[half:].zero_()
            conv.bias[half:].fill_(logvar)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(fold(planes))))
        h = unfold(self.conv_out(F.silu(self.norm_out(h))))                # (B, 3, 2z, r, r)
        per_plane = [conv(h[:, k]).chunk(2, dim=1) for k, conv in enumerate(self.quant_conv)]
        return torch.cat([m for m, _ in per_plane] + [lv for _, lv in per_plane], dim=1)


class TriplaneDecoder(nn.Module):
    """Latent ``(B, 3 * embed_dim, r, r)`` -> HDBPE tri-planes, coarse to fine (module docstring)."""

    def __init__(self, spec: TriplaneVAESpec):
        super().__init__()
        s = spec
        block_in = s.ch * s.ch_mult[-1]
        res = s.latent_resolution
        self.post_quant_conv = nn.ModuleList([nn.Conv2d(s.embed_dim, s.z_channels, 1) for _ in range(3)])
        self.conv_in = nn.Conv2d(s.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, s)
        self.levels = nn.ModuleList()
        self.heads = nn.ModuleDict()
        for level in reversed(range(len(s.ch_mult))):
            block_out = s.ch * s.ch_mult[level]
            blocks: list[nn.Module] = []
            for _ in range(s.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, s.dropout))
                block_in = block_out
                if res in s.attn_resolutions:
                    blocks.append(AttnBlock(block_in))
            if res in s.inter_attn_resolutions:
                blocks.append(CrossPlaneBlock(block_in, s.dropout))
            if res in s.hdbpe_resolutions:
                self.heads[str(res)] = nn.Conv2d(block_in, s.plane_channels, 1)
            self.levels.append(nn.Sequential(*blocks))
            if level != 0:
                self.levels.append(Upsample(block_in))
                res *= 2
        missing = set(s.hdbpe_resolutions) - {int(k) for k in self.heads}
        if missing:
            raise ValueError(f"hdbpe_resolutions {sorted(missing)} are not decoder resolutions")
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, s.plane_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        zs = z.chunk(3, dim=1)
        h = torch.stack([conv(zk) for conv, zk in zip(self.post_quant_conv, zs)], dim=1)
        h = self.mid(self.conv_in(fold(h)))
        planes: list[torch.Tensor] = []
        for module in self.levels:
            h = module(h)
            if not isinstance(module, Upsample) and str(h.shape[-1]) in self.heads:
                planes.append(unfold(self.heads[str(h.shape[-1])](h)))
        planes.append(unfold(self.conv_out(F.silu(self.norm_out(h)))))
        return planes


class TriplaneVAE(ConvVAE):
    """Three planes in (``(B, 3, C, R, R)``), a tri-plane latent, tri-planes out."""

    encoder_class = TriplaneEncoder
    decoder_class = TriplaneDecoder


def triplane_spec(v, *, in_channels: int, resolution: int) -> TriplaneVAESpec:
    """The tri-plane VAE of a config's ``vae`` section ``v``, for ``in_channels`` encoder input
    channels (the PointNet's) at plane ``resolution``."""
    return TriplaneVAESpec(
        in_channels=in_channels, resolution=resolution, ch=v.ch,
        ch_mult=tuple(v.ch_mult), num_res_blocks=v.num_res_blocks, z_channels=v.z_channels,
        embed_dim=v.embed_dim, attn_resolutions=tuple(v.attn_resolutions),
        hdbpe_resolutions=tuple(v.hdbpe_resolutions), plane_channels=v.plane_channels,
        mid_attn_heads=v.mid_attn_heads, dropout=v.dropout,
        inter_attn_resolutions=tuple(v.inter_attn_resolutions),
    )

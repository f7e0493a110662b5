"""The D2C-VAE for 2-D planes: conv encoder, diagonal Gaussian posterior, HDBPE plane decoder.

Shapes (image domain, ``f = 2 ** (len(ch_mult) - 1)``):

- encoder input ``(B, in_channels, R, R)``;
- posterior mean / logvar ``(B, embed_dim, R/f, R/f)``;
- decoded planes: a list, coarse to fine, of ``(B, plane_channels, r, r)`` for every ``r`` in
  ``sorted(hdbpe_resolutions) + [R]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddmi.nn.blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from ddmi.vae.posterior import DiagonalGaussian


@dataclass
class ConvVAESpec:
    """Architecture of the 2-D conv VAE (names follow the spec's ``ddconfig``)."""

    in_channels: int = 3
    resolution: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 128
    embed_dim: int = 64
    attn_resolutions: tuple[int, ...] = ()
    hdbpe_resolutions: tuple[int, ...] = (128, 64)
    plane_channels: int = 64
    mid_attn_heads: int = 1
    dropout: float = 0.0

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.downsample_factor

    @property
    def plane_resolutions(self) -> list[int]:
        """Plane sizes, coarse to fine."""
        return sorted(self.hdbpe_resolutions) + [self.resolution]


class Encoder(nn.Module):
    """Image -> posterior parameters ``(B, 2*embed_dim, R/f, R/f)``."""

    def __init__(self, spec: ConvVAESpec):
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
            if level != len(s.ch_mult) - 1:
                blocks.append(Downsample(block_in))
                res //= 2
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(
            ResnetBlock(block_in, block_in, s.dropout),
            AttnBlock(block_in, s.mid_attn_heads),
            ResnetBlock(block_in, block_in, s.dropout),
        )
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * s.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * s.z_channels, 2 * s.embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class PlaneDecoder(nn.Module):
    """Latent ``(B, embed_dim, r, r)`` -> HDBPE planes, coarse to fine (see module docstring)."""

    def __init__(self, spec: ConvVAESpec):
        super().__init__()
        s = spec
        block_in = s.ch * s.ch_mult[-1]
        res = s.latent_resolution
        self.post_quant_conv = nn.Conv2d(s.embed_dim, s.z_channels, 1)
        self.conv_in = nn.Conv2d(s.z_channels, block_in, 3, padding=1)
        self.mid = nn.Sequential(
            ResnetBlock(block_in, block_in, s.dropout),
            AttnBlock(block_in, s.mid_attn_heads),
            ResnetBlock(block_in, block_in, s.dropout),
        )
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
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        planes: list[torch.Tensor] = []
        for module in self.levels:
            h = module(h)
            if not isinstance(module, Upsample) and str(h.shape[-1]) in self.heads:
                planes.append(self.heads[str(h.shape[-1])](h))
        planes.append(self.conv_out(F.silu(self.norm_out(h))))
        return planes


class ConvVAE(nn.Module):
    """Encoder -> diagonal Gaussian posterior -> plane decoder; here for a single 2-D plane (the
    image domain). The tri-plane and video VAEs subclass it and change only the two networks."""

    encoder_class: type[nn.Module] = Encoder
    decoder_class: type[nn.Module] = PlaneDecoder

    def __init__(self, spec: ConvVAESpec):
        super().__init__()
        self.spec = spec
        self.encoder = self.encoder_class(spec)
        self.decoder = self.decoder_class(spec)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(z)

"""Space-time planes: the video D2C-VAE's three planes ``[xy | xt | yt]`` (rows = time on the
time planes), the encoder (TimeSformer tokens -> planes), the plane decoder and cross-plane
attention. Conventions: :mod:`ddmi.domains.video.model`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddmi.nn.blocks import AttnBlock, ResnetBlock, group_norm
from ddmi.nn.timesformer import AxisCollapser, TimeSformer
from ddmi.vae.planes import ConvVAE

PLANES = ("xy", "xt", "yt")   # plane order; rows = time on the time planes


@dataclass
class VideoVAESpec:
    resolution: int = 256
    frames: int = 16
    enc_dim: int = 384
    enc_depth: int = 8
    enc_heads: int = 8
    enc_head_dim: int = 64
    enc_ff_mult: int = 4
    collapse_depth: int = 4
    collapse_heads: int = 4
    collapse_head_dim: int = 48
    collapse_mlp: int = 512
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    z_channels: int = 64
    embed_dim: int = 64
    hdbpe_resolutions: tuple[int, ...] = (128, 64)
    inter_attn_resolutions: tuple[int, ...] = (32, 64, 128, 256)
    plane_channels: int = 64
    mid_attn_heads: int = 16
    cross_heads: int = 8
    cross_expand: bool = True
    dropout: float = 0.0
    # official-compatibility switches (config section ``video``; ddmi.domains.video.official)
    official_rotary: bool = False
    collapse_readout: str = "token"
    collapse_norm: bool = True
    latent_order: tuple[str, ...] = PLANES

    @property
    def patch(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.patch

    def plane_shapes(self, resolution: int | None = None) -> list[tuple[int, int]]:
        """``(rows, cols)`` of the xy, xt, yt planes at spatial size ``resolution`` (latent by default)."""
        r = self.latent_resolution if resolution is None else resolution
        return [(r, r), (self.frames, r), (self.frames, r)]

    @property
    def plane_resolutions(self) -> list[int]:
        return sorted(self.hdbpe_resolutions) + [self.resolution]

    def latent_shapes(self) -> list[tuple[int, int]]:
        """``(rows, cols)`` of the planes in the latent's token order ``latent_order``."""
        shapes = dict(zip(PLANES, self.plane_shapes()))
        return [shapes[n] for n in self.latent_order]

    def to_latent(self, planes: list[torch.Tensor]) -> torch.Tensor:
        """Planes in :data:`PLANES` order -> tokens ``(B, C, N)`` in ``latent_order``."""
        return flatten_planes([planes[PLANES.index(n)] for n in self.latent_order])

    def from_latent(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Tokens ``(B, C, N)`` in ``latent_order`` -> planes in :data:`PLANES` order."""
        parts = dict(zip(self.latent_order, split_planes(tokens, self.latent_shapes())))
        return [parts[n] for n in PLANES]


def flatten_planes(planes: list[torch.Tensor]) -> torch.Tensor:
    """``[(B, C, r_k, c_k)]`` -> ``(B, C, sum r_k c_k)`` (row-major, in list order)."""
    return torch.cat([p.flatten(2) for p in planes], dim=2)


def split_planes(tokens: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_planes`: ``(B, C, N)`` -> ``[(B, C, r_k, c_k)]``."""
    sizes = [r * c for r, c in shapes]
    assert tokens.shape[-1] == sum(sizes), f"expected {sum(sizes)} tokens, got {tokens.shape[-1]}"
    return [t.reshape(*tokens.shape[:2], r, c) for t, (r, c) in zip(tokens.split(sizes, dim=2), shapes)]


class CrossPlaneAttention(nn.Module):
    """Token-level attention across planes: every plane of a sample is flattened, the tokens are
    concatenated, GroupNorm-ed, attended (``heads`` heads; with ``expand`` each head has the full
    ``C`` channels, so q/k/v map ``C -> heads*C``, docs/official-code.md §2.1 ``*-expand``; otherwise ``C/heads``),
    projected back to ``C`` and added to the input; then split back into planes."""

    def __init__(self, channels: int, heads: int, *, expand: bool = False, zero_init: bool = False):
        super().__init__()
        self.heads = heads
        self.head_dim = channels if expand else channels // heads
        assert expand or channels % heads == 0, f"{channels} channels not divisible by {heads} heads"
        inner = self.heads * self.head_dim
        self.norm = group_norm(channels)
        self.q, self.k, self.v = (nn.Linear(channels, inner) for _ in range(3))
        self.proj_out = nn.Linear(inner, channels)
        if zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, planes: list[torch.Tensor]) -> list[torch.Tensor]:
        shapes = [tuple(p.shape[-2:]) for p in planes]
        x = flatten_planes(planes)                                        # (B, C, N)
        b, _, n = x.shape
        y = self.norm(x).transpose(1, 2)                                  # (B, N, C)
        q, k, v = (lin(y).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        x = x + self.proj_out(out).transpose(1, 2)
        return split_planes(x, shapes)


class VideoEncoder(nn.Module):
    """Clip ``(B, 3, T, R, R)`` -> posterior parameters ``(B, 2 * embed_dim, N)``: the means of
    the [xy | xt | yt] planes, then their log-variances (module docstring)."""

    def __init__(self, s: VideoVAESpec):
        super().__init__()
        self.spec = s
        h = s.latent_resolution
        self.timesformer = TimeSformer(patch=s.patch, dim=s.enc_dim, depth=s.enc_depth, heads=s.enc_heads,
                                       dim_head=s.enc_head_dim, ff_mult=s.enc_ff_mult,
                                       official_rotary=s.official_rotary)
        kw = dict(dim=s.enc_dim, depth=s.collapse_depth, heads=s.collapse_heads,
                  dim_head=s.collapse_head_dim, mlp_dim=s.collapse_mlp, readout=s.collapse_readout,
                  final_norm=s.collapse_norm)
        # xy collapses t; xt (rows t, cols x) collapses y; yt (rows t, cols y) collapses x
        self.collapse = nn.ModuleList([AxisCollapser(length=s.frames, **kw), AxisCollapser(length=h, **kw),
                                       AxisCollapser(length=h, **kw)])
        self.quant_conv = nn.ModuleList([nn.Conv2d(s.enc_dim, 2 * s.embed_dim, 1) for _ in PLANES])

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        s = self.spec
        assert clip.shape[1:] == (3, s.frames, s.resolution, s.resolution), (
            f"expected clips (B, 3, {s.frames}, {s.resolution}, {s.resolution}), got {tuple(clip.shape)}")
        x = self.timesformer(clip)                                         # (B, T, h, w, D)
        b, t, h, w, d = x.shape
        xy = self.collapse[0](x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)).reshape(b, h, w, d)
        xt = self.collapse[1](x.permute(0, 1, 3, 2, 4).reshape(b * t * w, h, d)).reshape(b, t, w, d)
        yt = self.collapse[2](x.reshape(b * t * h, w, d)).reshape(b, t, h, d)
        params = [conv(p.permute(0, 3, 1, 2)) for conv, p in zip(self.quant_conv, (xy, xt, yt))]
        means = [p.chunk(2, dim=1)[0] for p in params]
        logvars = [p.chunk(2, dim=1)[1] for p in params]
        return torch.cat([s.to_latent(means), s.to_latent(logvars)], dim=1)


class PlaneUpsample(nn.Module):
    """Nearest upsampling by ``(rows, cols)`` factors, then a 3x3 conv (weights shared by planes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=factor, mode="nearest"))


class VideoDecoder(nn.Module):
    """Latent ``(B, embed_dim, N)`` -> HDBPE planes ``[xy_0, xt_0, yt_0, xy_1, ...]`` (coarse to
    fine). Convolutions are shared by the three planes (run plane by plane: the shapes differ);
    planes mix through :class:`CrossPlaneAttention` after the middle block and at every
    resolution in ``inter_attn_resolutions``. xy is upsampled x2 on both axes, the time planes
    only along their columns (rows = time stay ``T``)."""

    def __init__(self, s: VideoVAESpec):
        super().__init__()
        self.spec = s
        block_in = s.ch * s.ch_mult[-1]
        res = s.latent_resolution
        self.post_quant_conv = nn.ModuleList([nn.Conv2d(s.embed_dim, s.z_channels, 1) for _ in PLANES])
        self.conv_in = nn.Conv2d(s.z_channels, block_in, 3, padding=1)
        self.mid = nn.Sequential(ResnetBlock(block_in, block_in, s.dropout), AttnBlock(block_in, s.mid_attn_heads),
                                 ResnetBlock(block_in, block_in, s.dropout))
        self.mid_cross = CrossPlaneAttention(block_in, s.cross_heads, expand=s.cross_expand)
        self.levels = nn.ModuleList()
        self.cross = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(s.ch_mult))):
            block_out = s.ch * s.ch_mult[level]
            blocks = []
            for _ in range(s.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, s.dropout))
                block_in = block_out
            self.levels.append(nn.Sequential(*blocks))
            if res in s.inter_attn_resolutions:
                self.cross[str(res)] = CrossPlaneAttention(block_in, s.cross_heads, expand=s.cross_expand)
            if res in s.hdbpe_resolutions:
                self.heads[str(res)] = nn.Conv2d(block_in, s.plane_channels, 1)
            if level != 0:
                self.upsample.append(PlaneUpsample(block_in))
                res *= 2
        missing = set(s.hdbpe_resolutions) - {int(k) for k in self.heads}
        if missing:
            raise ValueError(f"hdbpe_resolutions {sorted(missing)} are not decoder resolutions")
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, s.plane_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        s = self.spec
        planes = s.from_latent(z)
        planes = [self.mid(self.conv_in(conv(p))) for conv, p in zip(self.post_quant_conv, planes)]
        planes = self.mid_cross(planes)
        out: list[torch.Tensor] = []
        res = s.latent_resolution
        for i, blocks in enumerate(self.levels):
            planes = [blocks(p) for p in planes]
            if str(res) in self.cross:
                planes = self.cross[str(res)](planes)
            if str(res) in self.heads:
                out += [self.heads[str(res)](p) for p in planes]
            if i < len(self.upsample):
                planes = [self.upsample[i](p, (2, 2) if k == 0 else (1, 2)) for k, p in enumerate(planes)]
                res *= 2
        out += [self.conv_out(F.silu(self.norm_out(p))) for p in planes]
        return out


class VideoVAE(ConvVAE):
    """Clips in (``(B, 3, T, H, W)``), a space-time latent, xy / xt / yt planes out."""

    encoder_class = VideoEncoder
    decoder_class = VideoDecoder

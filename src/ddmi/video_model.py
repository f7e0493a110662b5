"""The video D2C-VAE (spec 3.4): TimeSformer encoder -> space-time planes -> CFC MLP -> RGB.

Conventions (the video domain; written down once here and in ``docs/video.md``):

* **Clips** are float32 ``(B, 3, T, H, W)`` in [-1, 1] (H = W = ``data.resolution``).
* **Coordinates** are ``(x, y, t)`` in [-1, 1] with pixel-centre semantics on every axis: frame
  ``k`` of ``T`` sits at ``t = -1 + (2k + 1) / T``, so the same field rendered with another
  frame count samples the same time interval more or less densely (continuous time).
* **Planes**, in the order :data:`PLANES` = ``(xy, xt, yt)``, are 2-D tensors ``(C, rows,
  cols)``: ``xy`` has rows = y, cols = x; ``xt`` has **rows = t**, cols = x; ``yt`` has **rows =
  t**, cols = y. They are read with :func:`ddmi.fields.sample_plane` (``grid_sample``,
  ``align_corners=False``, border) at ``(x, y)``, ``(x, t)`` and ``(y, t)`` respectively (the grid's
  channel 0 indexes the columns). The official code reads its time planes transposed (spec
  12.2.2); here a plane that varies only along its rows changes the video only along t (tested).
* **Latent**: the three posterior planes, ``embed_dim`` channels each, flattened row-major and
  concatenated on the token axis as ``[xy | xt | yt]``: ``(B, embed_dim, h*w + T*w + T*h)`` with
  ``h = w = R / p``, ``p = 2 ** (len(ch_mult) - 1)`` (the TimeSformer patch). This is also the
  LDM tensor (spec: ``(64, 2048)`` for SkyTimelapse).
* **Decoded planes** (HDBPE) of a batch are a flat list, coarse to fine, ``[xy_0, xt_0, yt_0,
  xy_1, ...]``; the time planes keep ``T`` rows at every scale (they are upsampled only along
  their spatial axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ddmi.fields import Field, sample_plane
from ddmi.nn.blocks import AttnBlock, ResnetBlock, group_norm
from ddmi.nn.pointnet import ResnetBlockFC
from ddmi.nn.spectral import SpectralRegularizer
from ddmi.nn.timesformer import AxisCollapser, TimeSformer
from ddmi.vae import ConvVAE, DiagonalGaussian

PLANES = ("xy", "xt", "yt")


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


def video_spec(cfg: DictConfig) -> VideoVAESpec:
    v, vc = cfg.vae, cfg.video
    return VideoVAESpec(
        resolution=cfg.data.resolution, frames=vc.frames, enc_dim=vc.enc_dim, enc_depth=vc.enc_depth,
        enc_heads=vc.enc_heads, enc_head_dim=vc.enc_head_dim, enc_ff_mult=vc.enc_ff_mult,
        collapse_depth=vc.collapse_depth, collapse_heads=vc.collapse_heads,
        collapse_head_dim=vc.collapse_head_dim, collapse_mlp=vc.collapse_mlp, ch=v.ch,
        ch_mult=tuple(v.ch_mult), num_res_blocks=v.num_res_blocks, z_channels=v.z_channels,
        embed_dim=v.embed_dim, hdbpe_resolutions=tuple(v.hdbpe_resolutions),
        inter_attn_resolutions=tuple(v.inter_attn_resolutions), plane_channels=v.plane_channels,
        mid_attn_heads=v.mid_attn_heads, cross_heads=vc.cross_heads, cross_expand=vc.cross_expand,
        dropout=v.dropout)


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
    ``C`` channels, so q/k/v map ``C -> heads*C``, spec 2.1 ``*-expand``; otherwise ``C/heads``),
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
                                       dim_head=s.enc_head_dim, ff_mult=s.enc_ff_mult)
        kw = dict(dim=s.enc_dim, depth=s.collapse_depth, heads=s.collapse_heads,
                  dim_head=s.collapse_head_dim, mlp_dim=s.collapse_mlp)
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
        return torch.cat([flatten_planes(means), flatten_planes(logvars)], dim=1)


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
        planes = split_planes(z, s.plane_shapes())
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


def plane_features(planes: list[torch.Tensor], coords: torch.Tensor, k: int) -> torch.Tensor:
    """Concatenated samples ``(B, N, 3C)`` of the xy, xt, yt planes of scale ``k`` at
    ``coords (B, N, 3)`` = (x, y, t)."""
    xy, xt, yt = planes[3 * k:3 * k + 3]
    return torch.cat([sample_plane(xy, coords[..., (0, 1)]), sample_plane(xt, coords[..., (0, 2)]),
                      sample_plane(yt, coords[..., (1, 2)])], dim=-1)


class VideoMLP(nn.Module):
    """CFC decoder of the video field (``MLPVideo``; no coordinate input, no scale injection).

    ``f_k`` = the concatenated samples of the three planes of scale ``k`` (coarse to fine);
    ``h = Res(3C -> H)(f_0)``; ``h = Res(H + 3C -> H)([h, f_k])``; ``h = Res(H)(h)``;
    ``rgb = Linear(H -> 3)(leaky_relu(h, 0.2))``.
    """

    def __init__(self, *, plane_channels: int, num_scales: int, hidden: int = 256):
        super().__init__()
        c, h = 3 * plane_channels, hidden
        self.num_scales = num_scales
        self.blocks = nn.ModuleList([ResnetBlockFC(c, h)] + [ResnetBlockFC(h + c, h) for _ in range(num_scales - 1)])
        self.final = ResnetBlockFC(h, h)
        self.to_rgb = nn.Linear(h, 3)

    def forward(self, planes: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """``planes``: the flat list of the decoder; ``coords (B, N, 3)`` -> RGB ``(B, N, 3)``."""
        assert len(planes) == 3 * self.num_scales, f"expected {3 * self.num_scales} planes, got {len(planes)}"
        h = None
        for k, block in enumerate(self.blocks):
            f = plane_features(planes, coords, k)
            h = block(f) if h is None else block(torch.cat([h, f], dim=-1))
        return self.to_rgb(F.leaky_relu(self.final(h), 0.2))


def clip_coords(frames: int, height: int, width: int | None = None, *, device=None) -> torch.Tensor:
    """Pixel-centre coordinates of a clip, ``(T*H*W, 3)`` = (x, y, t), t-major then y then x."""
    from ddmi.fields import pixel_centers
    width = height if width is None else width
    t, y, x = torch.meshgrid(pixel_centers(frames, device=device), pixel_centers(height, device=device),
                             pixel_centers(width, device=device), indexing="ij")
    return torch.stack([x, y, t], dim=-1).reshape(-1, 3)


def render_clip(field: Field, resolution: int, frames: int) -> torch.Tensor:
    """Every field of the batch on a ``frames x resolution x resolution`` grid: ``(B, 3, F, R, R)``
    clamped to [-1, 1]. Any ``frames`` works (continuous time: same interval, denser samples)."""
    coords = clip_coords(frames, resolution, device=field.planes[0].device)
    rgb = field.query(coords)
    b = field.batch_size
    return rgb.reshape(b, frames, resolution, resolution, 3).permute(0, 4, 1, 2, 3).clamp(-1.0, 1.0)


def video_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of clips in [-1, 1] (peak-to-peak 2), over the whole batch."""
    mse = (pred.clamp(-1, 1) - target).pow(2).mean()
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


class VideoAutoencoder(nn.Module):
    """Clip -> latent ``(embed_dim, N)`` -> ``Field`` of RGB at ``(x, y, t)`` (module docstring)."""

    domain = "video"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.spec = video_spec(cfg)
        self.resolution = cfg.data.resolution
        self.frames = cfg.video.frames
        self.fps = cfg.video.fps
        self.hflip = cfg.data.hflip
        self.vae = VideoVAE(self.spec)
        self.mlp = VideoMLP(plane_channels=self.spec.plane_channels,
                            num_scales=len(self.spec.plane_resolutions), hidden=cfg.mlp.hidden)
        self.spectral = SpectralRegularizer(self.vae, power_iters=cfg.loss.sn_power_iters) \
            if cfg.loss.sn_reg else None

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.spec.embed_dim, sum(r * c for r, c in self.spec.plane_shapes()))

    def components(self) -> dict[str, nn.Module]:
        return {"encoder": self.vae.encoder, "timesformer": self.vae.encoder.timesformer,
                "decoder": self.vae.decoder, "mlp": self.mlp}

    def encode(self, clips: torch.Tensor) -> DiagonalGaussian:
        """``clips (B, 3, T, R, R)`` in [-1, 1] at the training size -> posterior."""
        return self.vae.encode(clips)

    def encoder_views(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """Encoder inputs of a batch (stage-2 latent cache): the clips, and their mirrors when
        ``data.hflip`` is on."""
        return [clips, clips.flip(-1)] if self.hflip else [clips]

    def decode(self, z: torch.Tensor, *, chunk: int = 16384) -> Field:
        return Field(self.vae.decode(z), self.mlp, {}, chunk=chunk)

    def render(self, z: torch.Tensor, resolution: int | None = None, frames: int | None = None) -> torch.Tensor:
        return render_clip(self.decode(z), resolution or self.resolution, frames or self.frames)

    def random_inputs(self, generator: torch.Generator, n: int, *, hflip: bool = False) -> dict:
        """All randomness of one training step for a global batch of ``n`` clips."""
        flip = torch.rand(n, generator=generator) < 0.5
        return {"flip": flip if hflip else torch.zeros(n, dtype=torch.bool),
                "frame": torch.randint(0, self.frames, (n,), generator=generator),
                "noise": torch.randn((n, *self.latent_shape), generator=generator)}

    def reconstruct(self, clips: torch.Tensor, rand: dict) -> tuple[torch.Tensor, torch.Tensor, DiagonalGaussian]:
        """The training view of ``clips`` (mirrored where ``rand["flip"]``) and its unclamped
        reconstruction (posterior noise ``rand["noise"]``): ``pred, targets (B, 3, T, H, W)``
        and the posterior."""
        clips = torch.where(rand["flip"][:, None, None, None, None].to(clips.device), clips.flip(-1), clips)
        _, _, t, h, _ = clips.shape
        posterior = self.vae.encode(clips)
        z = posterior.mean + posterior.std * rand["noise"]
        field = Field(self.vae.decode(z), self.mlp, {}, chunk=1 << 62)
        return render_clip_raw(field, h, t), clips, posterior

    def forward(self, clips: torch.Tensor, rand: dict, *, kl_weight: float, sn_weight: float,
                perceptual: nn.Module | None = None, perceptual_weight: float = 1.0, adversary=None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage-1 loss on ``clips (B, 3, T, R, R)``: L1 summed over (C, T, H, W), batch mean;
        ``+ kl_weight * KL`` (summed, batch mean); ``+ perceptual_weight * LPIPS`` on one random
        frame per clip when a perceptual network is given; ``+ sn_weight *`` the spectral
        regulariser (the VAE's convolutions; not the TimeSformer's linear layers); ``+
        adversary(fake, real, frame) -> (loss, logs)`` on the clips when given (the generator side
        of adversarial fine-tuning, :mod:`ddmi.gan`; ``frame`` is the same random frame per clip
        as the LPIPS term's)."""
        pred, clips, posterior = self.reconstruct(clips, rand)               # (B, 3, T, H, W)
        b = clips.shape[0]
        l1 = (pred - clips).abs().flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = l1 + kl_weight * kl
        logs = {"l1": l1.detach(), "kl": kl.detach()}
        idx = rand["frame"].to(clips.device)
        if perceptual is not None:
            ar = torch.arange(b, device=clips.device)
            lp = perceptual(pred[ar, :, idx], clips[ar, :, idx]).mean()
            loss = loss + perceptual_weight * lp
            logs["lpips"] = lp.detach()
        if adversary is not None:
            adv, adv_logs = adversary(pred, clips, idx)
            loss = loss + adv
            logs.update(adv_logs)
        if self.spectral is not None and sn_weight > 0:
            sn = self.spectral(self.vae)
            loss = loss + sn_weight * sn
            logs["sn"] = sn.detach()
        with torch.no_grad():
            logs["psnr"] = video_psnr(pred.detach(), clips)
        return loss, logs


def render_clip_raw(field: Field, resolution: int, frames: int) -> torch.Tensor:
    """:func:`render_clip` without the clamp (for the training loss)."""
    coords = clip_coords(frames, resolution, device=field.planes[0].device)
    rgb = field.query(coords)
    return rgb.reshape(field.batch_size, frames, resolution, resolution, 3).permute(0, 4, 1, 2, 3)

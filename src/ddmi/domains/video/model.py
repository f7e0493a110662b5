"""The video D2C-VAE (docs/official-code.md §3.4): TimeSformer encoder -> space-time planes -> CFC MLP -> RGB.

Conventions (the video domain; written down once here and in ``docs/video.md``):

* **Clips** are float32 ``(B, 3, T, H, W)`` in [-1, 1] (H = W = ``data.resolution``).
* **Coordinates** are ``(x, y, t)`` in [-1, 1] with pixel-centre semantics on every axis: frame
  ``k`` of ``T`` sits at ``t = -1 + (2k + 1) / T``, so the same field rendered with another
  frame count samples the same time interval more or less densely (continuous time).
* **Planes**, in the order :data:`PLANES` = ``(xy, xt, yt)``, are 2-D tensors ``(C, rows,
  cols)``: ``xy`` has rows = y, cols = x; ``xt`` has **rows = t**, cols = x; ``yt`` has **rows =
  t**, cols = y. They are read with :func:`ddmi.fields.sample_plane` (``grid_sample``,
  ``align_corners=False``, border) at ``(x, y)``, ``(x, t)`` and ``(y, t)`` respectively (the grid's
  channel 0 indexes the columns). The official code reads its time planes transposed (docs/official-code.md §12.2.2); here a plane that varies only along its rows changes the video only along t (tested).
* **Latent**: the three posterior planes, ``embed_dim`` channels each, flattened row-major and
  concatenated on the token axis as ``[xy | xt | yt]``: ``(B, embed_dim, h*w + T*w + T*h)`` with
  ``h = w = R / p``, ``p = 2 ** (len(ch_mult) - 1)`` (the TimeSformer patch). This is also the
  LDM tensor (spec: ``(64, 2048)`` for SkyTimelapse).
* **Decoded planes** (HDBPE) of a batch are a flat list, coarse to fine, ``[xy_0, xt_0, yt_0,
  xy_1, ...]``; the time planes keep ``T`` rows at every scale (they are upsampled only along
  their spatial axis).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ddmi.fields import Field, sample_plane
from ddmi.nn.pointnet import ResnetBlockFC
from ddmi.nn.spectral import SpectralRegularizer
from ddmi.vae.posterior import DiagonalGaussian
from ddmi.vae.spacetime import PLANES, VideoVAE, VideoVAESpec


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
        dropout=v.dropout, official_rotary=vc.official_rotary, collapse_readout=vc.collapse_readout,
        collapse_norm=vc.collapse_norm, latent_order=latent_order(vc.latent_order))


def latent_order(text: str) -> tuple[str, ...]:
    """``"xy,xt,yt"`` -> ``("xy", "xt", "yt")`` (config ``video.latent_order``)."""
    return tuple(n.strip() for n in text.split(","))


def sample_plane_corners(plane: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """:func:`ddmi.fields.sample_plane` with ``align_corners=True`` (the official video query):
    ``plane (B, C, H, W)``, ``coords (B, N, 2)`` (column, row) -> ``(B, N, C)``."""
    out = F.grid_sample(plane, coords.unsqueeze(1).to(plane.dtype), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out[:, :, 0].transpose(1, 2)


def plane_features(planes: list[torch.Tensor], coords: torch.Tensor, k: int, *,
                   official_query: bool = False) -> torch.Tensor:
    """Concatenated samples ``(B, N, 3C)`` of the xy, xt, yt planes of scale ``k`` at
    ``coords (B, N, 3)`` = (x, y, t). ``official_query`` (config ``video.official_query``): the
    official reading, ``align_corners=True`` and the time planes transposed (xt at column t, row
    y; yt at column t, row x)."""
    xy, xt, yt = planes[3 * k:3 * k + 3]
    if official_query:
        return torch.cat([sample_plane_corners(xy, coords[..., (0, 1)]),
                          sample_plane_corners(xt, coords[..., (2, 1)]),
                          sample_plane_corners(yt, coords[..., (2, 0)])], dim=-1)
    return torch.cat([sample_plane(xy, coords[..., (0, 1)]), sample_plane(xt, coords[..., (0, 2)]),
                      sample_plane(yt, coords[..., (1, 2)])], dim=-1)


class VideoMLP(nn.Module):
    """CFC decoder of the video field (``MLPVideo``; no coordinate input, no scale injection).

    ``f_k`` = the concatenated samples of the three planes of scale ``k`` (coarse to fine);
    ``h = Res(3C -> H)(f_0)``; ``h = Res(H + 3C -> H)([h, f_k])``; ``h = Res(H)(h)``;
    ``rgb = Linear(H -> 3)(leaky_relu(h, 0.2))``.
    """

    def __init__(self, *, plane_channels: int, num_scales: int, hidden: int = 256, official_query: bool = False):
        super().__init__()
        c, h = 3 * plane_channels, hidden
        self.num_scales = num_scales
        self.official_query = official_query
        self.blocks = nn.ModuleList([ResnetBlockFC(c, h)] + [ResnetBlockFC(h + c, h) for _ in range(num_scales - 1)])
        self.final = ResnetBlockFC(h, h)
        self.to_rgb = nn.Linear(h, 3)

    def forward(self, planes: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """``planes``: the flat list of the decoder; ``coords (B, N, 3)`` -> RGB ``(B, N, 3)``."""
        assert len(planes) == 3 * self.num_scales, f"expected {3 * self.num_scales} planes, got {len(planes)}"
        h = None
        for k, block in enumerate(self.blocks):
            f = plane_features(planes, coords, k, official_query=self.official_query)
            h = block(f) if h is None else block(torch.cat([h, f], dim=-1))
        return self.to_rgb(F.leaky_relu(self.final(h), 0.2))


def clip_coords(frames: int, height: int, width: int | None = None, *, device=None) -> torch.Tensor:
    """Pixel-centre coordinates of a clip, ``(T*H*W, 3)`` = (x, y, t), t-major then y then x."""
    from ddmi.fields import pixel_centers
    width = height if width is None else width
    t, y, x = torch.meshgrid(pixel_centers(frames, device=device), pixel_centers(height, device=device),
                             pixel_centers(width, device=device), indexing="ij")
    return torch.stack([x, y, t], dim=-1).reshape(-1, 3)


def grid_points(coords_xy: torch.Tensor, coords_xt: torch.Tensor, coords_yt: torch.Tensor) -> torch.Tensor:
    """The points ``(T*H*W, 3)`` = (x, y, t), t-major then y then x, of the official coordinate
    grids (``convert_to_coord_format_3d``): ``coords_xy (1, 2, H, W)`` with channels (x, y),
    ``coords_xt (1, 2, T, W)`` with (t, x), ``coords_yt (1, 2, T, H)`` with (t, y). The official
    MLP broadcasts its three plane samples over (t, h, w), so it computes the field at exactly
    these points; they must form a product grid (checked)."""
    x, y = coords_xy[0, 0], coords_xy[0, 1]                        # (H, W)
    t = coords_xt[0, 0]                                             # (T, W)
    frames, (h, w) = t.shape[0], x.shape
    if not (torch.equal(coords_xt[0, 1], x[:1].expand(frames, w))
            and torch.equal(coords_yt[0, 0][:, :1].expand(-1, w), t)
            and torch.equal(coords_yt[0, 1], y[:, 0][None].expand(frames, h))
            and torch.equal(x, x[:1].expand(h, w)) and torch.equal(y, y[:, :1].expand(h, w))
            and torch.equal(t, t[:, :1].expand(frames, w))):
        raise ValueError("the coordinate grids are not one product grid over (t, y, x)")
    tt, yy, xx = torch.meshgrid(t[:, 0], y[:, 0], x[0], indexing="ij")
    return torch.stack([xx, yy, tt], dim=-1).reshape(-1, 3)


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
                            num_scales=len(self.spec.plane_resolutions), hidden=cfg.mlp.hidden,
                            official_query=cfg.video.official_query)
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

    def plane_posteriors(self, posterior: DiagonalGaussian) -> dict[str, DiagonalGaussian]:
        """The posterior of each plane, ``{"xy", "xt", "yt"}`` -> a Gaussian over ``(B, 2 *
        embed_dim, rows, cols)`` (``posterior``: of :meth:`encode`, tokens in ``latent_order``)."""
        e = self.spec.embed_dim
        means = self.spec.from_latent(posterior.params[:, :e])
        logvars = self.spec.from_latent(posterior.params[:, e:])
        return {n: DiagonalGaussian(torch.cat([m, lv], dim=1)) for n, m, lv in zip(PLANES, means, logvars)}

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

    def adversarial_views(self, clips: torch.Tensor, rand: dict):
        """``(fake, real, cond)`` as the critics see them: clips ``(B, 3, T, H, W)`` and the frame
        per clip that the 2-D critic judges (``rand["frame"]``, the LPIPS term's frame)."""
        pred, targets, _ = self.reconstruct(clips, rand)
        return pred, targets, rand["frame"]

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
        of adversarial fine-tuning, :mod:`ddmi.training.adversarial`; ``frame`` is the same random frame per clip
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

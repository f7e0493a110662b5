"""The NeRF D2C-VAE: coloured PointNet -> tri-plane VAE -> tri-planes -> NeRF MLP (docs/official-code.md §3.3).

**One frame** (the official code encodes with ``p / 1.1`` and renders with ``p / 3.5``; docs/official-code.md §12.2.4): world points (the cameras' frame; point clouds are first multiplied by
``nerf.points_scale``) are normalised once, ``u = p / nerf.half_extent``, for the PointNet scatter
*and* for the plane queries, with the plane order, cells and sampling of :mod:`ddmi.vae.triplane_coords`.
Outside the box ``|u| <= 1`` the density is exactly 0.

**The field** (:class:`NeRFMLP`, ``MLPNeRF`` with **real** ReLUs; the official
``nn.LeakyReLU(True)`` has slope 1, i.e. the field is affine: docs/official-code.md §12.2.3): input =
``[the three planes' features concatenated (3C per scale, every decoded scale), PE(u)]``,
``depth`` layers of ``width`` with the input re-concatenated before the layers in ``skips``;
``sigma = softplus(Linear(h))``; ``rgb = sigmoid(Linear(ReLU(Linear([Linear(h), PE(dir)]))))``.
PE(x) = ``[x, sin(2^k x), cos(2^k x)]_{k < L}``.

A decoded :class:`~ddmi.fields.Field` is queried at 6-D coordinates ``[u, unit view direction]``
and returns ``[sigma, r, g, b]`` (``sigma >= 0`` in world units, rgb in [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ddmi.data.srn import split_nerf_item
from ddmi.fields import Field
from ddmi.nn.pointnet import LocalPoolPointNet
from ddmi.nn.spectral import SpectralRegularizer
from ddmi.render.volume import SRN_FOV, render_rays
from ddmi.vae.posterior import DiagonalGaussian
from ddmi.vae.triplane_coords import sample_triplane, triplane_grid
from ddmi.vae.triplanes import TriplaneVAE, triplane_spec


def positional_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """``x (..., D)`` -> ``(..., D * (1 + 2 L))``: ``[x, sin(2^k x) (k < L), cos(2^k x) (k < L)]``."""
    if num_freqs <= 0:
        return x
    freqs = 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    xf = (x[..., None, :] * freqs[:, None]).flatten(-2)                  # (..., L * D)
    return torch.cat([x, xf.sin(), xf.cos()], dim=-1)


class NeRFMLP(nn.Module):
    """Tri-plane features + PE(position) (+ PE(view direction)) -> density and colour (module doc).

    Official compatibility (:class:`~ddmi.domains.nerf.config.NeRFConfig`): ``world_scale`` (the
    coordinates are world points, the planes are read at ``p / world_scale`` and the PE is of
    ``p``), ``align_corners``, ``activation="identity"`` and ``mask_outside_box=False``."""

    def __init__(self, *, plane_channels: int, num_scales: int = 1, depth: int = 6, width: int = 256,
                 skips: tuple[int, ...] = (2, 4), multires: int = 10, multires_views: int = 4,
                 world_scale: float | None = None, align_corners: bool = False, activation: str = "relu",
                 mask_outside_box: bool = True):
        super().__init__()
        self.multires, self.multires_views, self.skips = multires, multires_views, tuple(skips)
        assert activation in ("relu", "identity"), f"unknown activation {activation!r}"
        self.world_scale, self.align_corners = world_scale, align_corners
        self.activation, self.mask_outside_box = activation, mask_outside_box
        in_ch = 3 * plane_channels * num_scales + 3 * (1 + 2 * multires)
        dir_ch = 3 * (1 + 2 * multires_views)
        self.layers = nn.ModuleList()
        for i in range(depth):
            fan_in = in_ch if i == 0 else width + (in_ch if i in self.skips else 0)
            self.layers.append(nn.Linear(fan_in, width))
        self.sigma = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.rgb_hidden = nn.Linear(width + dir_ch, width // 2)
        self.rgb = nn.Linear(width // 2, 3)
        # He initialisation of the ReLU layers (PyTorch's default shrinks the signal ~2.4x per
        # layer, so the field could hardly tell its plane features apart at the start)
        for layer in [*self.layers, self.feature, self.rgb_hidden]:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, planes: list[torch.Tensor], coords: torch.Tensor, *, raw: bool = False) -> torch.Tensor:
        """``planes``: ``(B, 3, C, r, r)`` per scale; ``coords (B, N, 6)`` = [u (or the world point,
        with ``world_scale``), unit direction].

        Returns ``(B, N, 4)``: density (0 outside ``|u| <= 1``) and rgb in [0, 1] (``raw``: the
        density before its softplus and mask)."""
        x, d = coords[..., :3], coords[..., 3:6]
        u = x if self.world_scale is None else x / self.world_scale
        grid = triplane_grid(u)
        feats = [sample_triplane(p, grid=grid, reduce="concat", align_corners=self.align_corners) for p in planes]
        sigma, rgb = self.network(feats + [positional_encoding(x, self.multires)],
                                  positional_encoding(d, self.multires_views))
        if not raw:
            sigma = F.softplus(sigma)
            if self.mask_outside_box:
                sigma = sigma * (u.abs().amax(-1) <= 1.0)
        return torch.cat([sigma[..., None], rgb], dim=-1)

    def network(self, x: list[torch.Tensor], pe_dir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP on its input ``x = [plane features..., PE(position)]`` (kept in pieces: a layer
        on a concatenation is the sum of its weight blocks applied to the pieces, no concatenated
        copies: memory-bound on CPU) and ``pe_dir``: the raw density ``(...)`` and rgb ``(..., 3)``."""
        act = (lambda t: F.relu(t, inplace=True)) if self.activation == "relu" else (lambda t: t)
        h = _linear(self.layers[0], x)
        for i, layer in enumerate(self.layers):
            if i:
                h = _linear(layer, [h] + x) if i in self.skips else layer(h)
            h = act(h)
        sigma = self.sigma(h)[..., 0]
        hc = act(_linear(self.rgb_hidden, [self.feature(h), pe_dir]))
        return sigma, torch.sigmoid(self.rgb(hc))


def _linear(layer: nn.Linear, pieces: list[torch.Tensor]) -> torch.Tensor:
    """``layer(torch.cat(pieces, -1))`` without materialising the concatenation."""
    out, start = None, 0
    for x in pieces:
        k = x.shape[-1]
        y = F.linear(x, layer.weight[:, start:start + k], layer.bias if out is None else None)
        out = y if out is None else out.add_(y)
        start += k
    assert start == layer.in_features, (start, layer.in_features)
    return out


class NeRFAutoencoder(nn.Module):
    """Coloured point cloud -> latent ``(3 * embed_dim, r, r)`` -> radiance ``Field`` (module doc)."""

    domain = "nerf"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        nc = cfg.nerf
        self.nerf = nc
        self.spec = triplane_spec(cfg.vae, in_channels=nc.pointnet_channels, resolution=cfg.data.resolution,
                                  cross_plane_order=nc.cross_plane_order, latent_order=nc.latent_planes)
        self.resolution = cfg.data.resolution
        self.half_extent = float(nc.half_extent)
        self.num_points = nc.num_points
        self.fov = nc.fov if nc.fov is not None else SRN_FOV
        assert nc.field_frame in ("box", "world"), f"nerf.field_frame must be box or world, not {nc.field_frame!r}"
        self.world_frame = nc.field_frame == "world"
        self.convonet_padding = nc.convonet_padding
        self.pixel_offset = float(nc.pixel_offset)
        self.pointnet = LocalPoolPointNet(dim=6, hidden=nc.pointnet_hidden, blocks=nc.pointnet_blocks,
                                          out_channels=nc.pointnet_channels, resolution=cfg.data.resolution,
                                          convonet_padding=nc.convonet_padding)
        self.vae = TriplaneVAE(self.spec)
        self.mlp = NeRFMLP(plane_channels=self.spec.plane_channels, num_scales=len(self.spec.plane_resolutions),
                           depth=nc.mlp_depth, width=cfg.mlp.hidden, skips=tuple(nc.skips),
                           multires=nc.multires, multires_views=nc.multires_views,
                           world_scale=self.half_extent if self.world_frame else None,
                           align_corners=bool(nc.align_corners), activation=nc.activation,
                           mask_outside_box=bool(nc.mask_outside_box))
        # posterior means at the prior's scale, small initial noise: colour reaches the latent (docs/nerf.md)
        self.vae.encoder.init_posterior(logvar=nc.posterior_logvar_init)
        self.spectral = SpectralRegularizer(self.vae, power_iters=cfg.loss.sn_power_iters) \
            if cfg.loss.sn_reg else None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.spec.latent_resolution
        return (3 * self.spec.embed_dim, r, r)

    def components(self) -> dict[str, nn.Module]:
        return {"pointnet": self.pointnet, "encoder": self.vae.encoder, "decoder": self.vae.decoder,
                "mlp": self.mlp}

    def normalize(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``(..., 3)`` -> the field's coordinates: ``u = p / half_extent`` (not
        clamped: the MLP zeroes the density outside the box; the PointNet clamps cells), or ``p``
        itself with ``nerf.field_frame=world``."""
        return points if self.world_frame else points / self.half_extent

    def encoder_input(self, points: torch.Tensor) -> torch.Tensor:
        """Coloured points ``(B, P, 6)`` (world xyz, rgb in [0, 1]) -> ``[u, 2 rgb - 1]`` (with
        ``nerf.convonet_padding``: the points as they are, the official PointNet input)."""
        if self.convonet_padding is not None:
            return points[..., :6]
        return torch.cat([self.normalize(points[..., :3]).clamp(-1, 1), points[..., 3:6] * 2 - 1], dim=-1)

    def encode(self, points: torch.Tensor) -> DiagonalGaussian:
        """``points (B, P, 6)`` world xyz + rgb in [0, 1] -> posterior over the latent."""
        return self.vae.encode(self.pointnet(self.encoder_input(points)))

    def encoder_views(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Encoder inputs of packed items (stage-2 latent cache): the coloured points."""
        return [batch[:, :self.num_points, :6]]

    def decode(self, z: torch.Tensor, *, chunk: int = 65536) -> Field:
        """Latent -> a ``Field`` queried at ``[u, unit direction]`` -> ``[sigma, rgb]``."""
        return Field(self.vae.decode(z), self.mlp, {}, chunk=chunk)

    def query_fn(self, planes: list[torch.Tensor]):
        """A renderer query (:mod:`ddmi.render.volume`) in world coordinates for decoded planes."""
        def query(points: torch.Tensor, dirs: torch.Tensor):
            out = self.mlp(planes, torch.cat([self.normalize(points), dirs], dim=-1))
            return out[..., 0], out[..., 1:]
        return query

    def field_query(self, field: Field):
        def query(points: torch.Tensor, dirs: torch.Tensor):
            out = field.query(torch.cat([self.normalize(points), dirs], dim=-1))
            return out[..., 0], out[..., 1:]
        return query

    def render_kwargs(self, *, train: bool) -> dict:
        nc = self.nerf
        return dict(near=nc.near, far=nc.far, num_samples=nc.num_samples if train else nc.render_samples,
                    num_importance=nc.num_importance, white_background=nc.white_background,
                    chunk=nc.render_chunk, depth_spacing=nc.depth_spacing, last_delta=nc.last_delta)

    def random_inputs(self, generator: torch.Generator, n: int, *, hflip: bool = False) -> dict:
        """All randomness of one training step for ``n`` objects: posterior noise, stratified
        jitter and importance-sampling uniforms (rays and points are drawn by the dataset)."""
        nc = self.nerf
        rand = {"noise": torch.randn((n, *self.latent_shape), generator=generator)}
        if nc.perturb:
            rand["jitter"] = torch.rand((n, nc.num_rays, nc.num_samples), generator=generator)
        if nc.point_rgb_weight > 0:
            rand["point_dirs"] = F.normalize(torch.randn((n, nc.num_points, 3), generator=generator), dim=-1)
        if nc.num_importance > 0:
            rand["importance_u"] = torch.rand((n, nc.num_rays, nc.num_importance), generator=generator)
        return rand

    def forward(self, batch: torch.Tensor, rand: dict, *, kl_weight: float, sn_weight: float,
                perceptual: nn.Module | None = None, perceptual_weight: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage-1 loss on packed items ``batch (B, num_points + R, 9)`` (:mod:`ddmi.data.srn`).

        ``rgb_weight * sum_rays |rgb - rgb_gt|`` (per object, batch mean; official: 20 x the sum
        over 5000 rays) + ``kl_weight * KL`` + ``sn_weight *`` the spectral regulariser, and
        ``point_rgb_weight * sum_points |field rgb - point rgb|`` when that weight is > 0 (the
        field queried at the encoder's own points, from ``rand["point_dirs"]``)."""
        assert perceptual is None, "the NeRF domain has no perceptual loss"
        points, origins, dirs, target = split_nerf_item(batch, self.num_points)
        posterior = self.encode(points)
        z = posterior.mean + posterior.std * rand["noise"]
        planes = self.vae.decode(z)
        kw = self.render_kwargs(train=True)
        kw["chunk"] = origins.shape[1]                     # one chunk: gradients flow through all rays
        out = render_rays(self.query_fn(planes), origins, dirs, jitter=rand.get("jitter"),
                          importance_u=rand.get("importance_u"), **kw)
        l1 = (out["rgb"] - target).abs().flatten(1).sum(1).mean()
        kl = posterior.kl().mean()
        loss = self.nerf.rgb_weight * l1 + kl_weight * kl
        logs = {"l1": l1.detach() / max(1, target[0].numel()), "kl": kl.detach()}
        if self.nerf.point_rgb_weight > 0:
            surface = self.mlp(planes, torch.cat([self.normalize(points[..., :3]), rand["point_dirs"]], dim=-1))
            point_l1 = (surface[..., 1:] - points[..., 3:6]).abs().flatten(1).sum(1).mean()
            loss = loss + self.nerf.point_rgb_weight * point_l1
            logs["point_l1"] = point_l1.detach() / max(1, points[0, :, 3:6].numel())
        if self.spectral is not None and sn_weight > 0:
            sn = self.spectral(self.vae)
            loss = loss + sn_weight * sn
            logs["sn"] = sn.detach()
        with torch.no_grad():
            mse = (out["rgb"].detach().clamp(0, 1) - target).pow(2).mean()
            logs["psnr"] = -10 * torch.log10(mse.clamp_min(1e-10))
        return loss, logs


"""The occupancy D2C-VAE: PointNet -> tri-plane conv VAE -> tri-plane HDBPE -> CFC MLP (docs/official-code.md §3.2).

Frame and plane conventions: :mod:`ddmi.vae.triplane_coords` (one normalisation ``u = p / half_extent`` for
both encoding and querying; planes ``xy, xz, yz``). Batches are the packed tensors of
:mod:`ddmi.data.shapes`.

An imported official checkpoint (:mod:`ddmi.domains.occupancy.official`) turns on the
official-compatibility switches of :class:`~ddmi.domains.occupancy.config.ShapesConfig`: the
ConvONet frame, ``align_corners=True`` queries, the official cross-plane concatenation order, the
official stage-1 latent order (:meth:`OccupancyAutoencoder.reconstruction_latent`) and a logit
without the final ReLU. The latent (``encode(...).mean``) stays ``[xy | xz | yz]``, the order the
official occupancy LDM was trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ddmi.data.shapes import split_item
from ddmi.fields import Field
from ddmi.nn.pointnet import LocalPoolPointNet, ResnetBlockFC
from ddmi.nn.spectral import SpectralRegularizer
from ddmi.vae.posterior import DiagonalGaussian
from ddmi.vae.triplane_coords import convonet_grid, half_extent, normalize_points, sample_triplane, triplane_grid
from ddmi.vae.triplanes import TriplaneVAE, plane_order, triplane_spec


def occupancy_iou(logits: torch.Tensor, occ: torch.Tensor, threshold_logit: float = 0.0) -> torch.Tensor:
    """Mean over the batch of the IoU of ``logits > threshold_logit`` with ``occ > 0.5``: ``()``."""
    pred, true = logits > threshold_logit, occ > 0.5
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float()
    return (inter / union.clamp_min(1)).mean()


class OccupancyAutoencoder(nn.Module):
    """Point cloud -> latent ``(3 * embed_dim, r, r)`` -> ``Field`` of occupancy logits.

    The field is queried at normalised coordinates ``u`` in ``[-1, 1]^3`` (world ``p = u *
    half_extent``) and returns logits ``(B, N, 1)``.
    """

    domain = "occupancy"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        sc = cfg.shapes
        self.spec = triplane_spec(cfg.vae, in_channels=cfg.shapes.pointnet_channels, resolution=cfg.data.resolution,
                                  cross_plane_order=sc.cross_plane_order)
        self.resolution = cfg.data.resolution
        self.padding = sc.padding
        self.half_extent = half_extent(sc.padding)
        self.num_points = sc.num_points
        self.threshold = sc.threshold
        self.convonet_coords = bool(sc.convonet_coords)
        self.stage1_order = None if sc.stage1_latent_planes is None else plane_order(sc.stage1_latent_planes)
        self.pointnet = LocalPoolPointNet(hidden=sc.pointnet_hidden, blocks=sc.pointnet_blocks,
                                          out_channels=sc.pointnet_channels, resolution=cfg.data.resolution,
                                          convonet_padding=sc.padding if self.convonet_coords else None)
        self.vae = TriplaneVAE(self.spec)
        self.mlp = OccupancyMLP(plane_channels=self.spec.plane_channels,
                                num_scales=len(self.spec.plane_resolutions), hidden=cfg.mlp.hidden,
                                convonet=(self.half_extent, sc.padding) if self.convonet_coords else None,
                                align_corners=bool(sc.align_corners), output_relu=bool(sc.mlp_output_relu))
        self.spectral = SpectralRegularizer(self.vae, power_iters=cfg.loss.sn_power_iters) \
            if cfg.loss.sn_reg else None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.spec.latent_resolution
        return (3 * self.spec.embed_dim, r, r)

    @property
    def threshold_logit(self) -> float:
        t = torch.tensor(self.threshold, dtype=torch.float64)
        return float(torch.log(t / (1 - t)))

    def components(self) -> dict[str, nn.Module]:
        return {"pointnet": self.pointnet, "encoder": self.vae.encoder, "decoder": self.vae.decoder,
                "mlp": self.mlp}

    def normalize(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> the field's coordinates ``u = p / half_extent`` (clamped to the box,
        except in the ConvONet frame, whose MLP sees the raw points)."""
        if self.convonet_coords:
            return points / self.half_extent
        return normalize_points(points, self.padding)

    def encode(self, points: torch.Tensor) -> DiagonalGaussian:
        """``points (B, N, 3)`` in the (padded) unit-cube frame -> posterior over the latent."""
        return self.vae.encode(self.pointnet(points if self.convonet_coords else self.normalize(points)))

    def reconstruction_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The latent a stage-1 reconstruction decodes for an encoded ``z (B, 3E, r, r)``: ``z``
        itself, or with ``shapes.stage1_latent_planes`` the planes restacked in that order (the
        official stage-1 mismatch, docs/official-code.md §12.2.1)."""
        if self.stage1_order is None:
            return z
        return torch.cat([z.chunk(3, dim=1)[k] for k in self.stage1_order], dim=1)

    def encoder_views(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Encoder inputs of a batch of packed items (stage-2 latent cache): one view, no flips."""
        return [split_item(batch, self.num_points)[0]]

    def decode(self, z: torch.Tensor, *, chunk: int = 32768) -> Field:
        """Latent ``(B, *latent_shape)`` -> a ``Field`` of logits at normalised coordinates."""
        return Field(self.vae.decode(z), self.mlp, {}, chunk=chunk)

    def random_inputs(self, generator: torch.Generator, n: int, *, hflip: bool = False) -> dict:
        """All randomness of one training step for a global batch of ``n`` shapes (the points
        themselves are drawn by the dataset)."""
        return {"noise": torch.randn((n, *self.latent_shape), generator=generator)}

    def forward(self, batch: torch.Tensor, rand: dict, *, kl_weight: float, sn_weight: float,
                perceptual: nn.Module | None = None, perceptual_weight: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage-1 loss on packed items ``batch (B, num_points + Q, 4)``.

        BCE-with-logits summed over the ``Q`` query points, averaged over the batch; plus
        ``kl_weight * KL`` (summed over the three latent planes, batch mean); plus
        ``sn_weight *`` the spectral regulariser. (``perceptual`` must be None: no 3-D LPIPS.)
        """
        assert perceptual is None, "the occupancy domain has no perceptual loss"
        points, queries, occ = split_item(batch, self.num_points)
        posterior = self.encode(points)
        z = posterior.mean + posterior.std * rand["noise"]
        planes = self.vae.decode(self.reconstruction_latent(z))
        logits = self.mlp(planes, self.normalize(queries))[..., 0]
        bce = F.binary_cross_entropy_with_logits(logits, occ, reduction="none").sum(1).mean()
        kl = posterior.kl().mean()
        loss = bce + kl_weight * kl
        logs = {"bce": bce.detach(), "kl": kl.detach()}
        if self.spectral is not None and sn_weight > 0:
            sn = self.spectral(self.vae)
            loss = loss + sn_weight * sn
            logs["sn"] = sn.detach()
        with torch.no_grad():
            logs["iou"] = occupancy_iou(logits.detach(), occ, self.threshold_logit)
        return loss, logs


class OccupancyMLP(nn.Module):
    """CFC occupancy decoder (``MLP3D``): tri-plane HDBPE + coordinates -> occupancy logit.

    ``f_k`` = the sum of the three plane samples at scale ``k`` (coarse to fine).
    ``h = fc_p(u) + Res(C -> H)(f_0)``; ``h = Res(H + C -> H)([h, f_k])`` for the finer scales;
    ``h = Res(H -> H)(h)``; ``logit = fc_out(relu(h))``. Res = :class:`ResnetBlockFC`.

    Official compatibility: ``convonet = (half_extent, padding)`` reads the planes in the ConvONet
    frame (``p = u * half_extent``; ``fc_p(p)``; grid :func:`convonet_grid`) and ``align_corners``
    reads them with ``align_corners=True``; ``output_relu=False``: ``logit = fc_out(h)`` (see
    :class:`~ddmi.domains.occupancy.config.ShapesConfig`).
    """

    def __init__(self, *, plane_channels: int, num_scales: int, hidden: int = 256,
                 convonet: tuple[float, float] | None = None, align_corners: bool = False,
                 output_relu: bool = True):
        super().__init__()
        self.convonet, self.align_corners, self.output_relu = convonet, align_corners, output_relu
        c, h = plane_channels, hidden
        self.fc_p = nn.Linear(3, h)
        self.blocks = nn.ModuleList([ResnetBlockFC(c, h)] + [ResnetBlockFC(h + c, h) for _ in range(num_scales - 1)])
        self.final = ResnetBlockFC(h, h)
        self.fc_out = nn.Linear(h, 1)

    def forward(self, planes: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """``planes``: coarse to fine ``(B, 3, C, h_k, w_k)``; ``coords (B, N, 3)`` normalised.

        Returns the occupancy logits ``(B, N, 1)``."""
        assert len(planes) == len(self.blocks), f"expected {len(self.blocks)} scales, got {len(planes)}"
        if self.convonet is None:
            h, grid = self.fc_p(coords), triplane_grid(coords)
        else:
            p = coords * self.convonet[0]
            h, grid = self.fc_p(p), convonet_grid(p, self.convonet[1])
        for k, (plane, block) in enumerate(zip(planes, self.blocks)):
            f = sample_triplane(plane, grid=grid, align_corners=self.align_corners)
            h = h + block(f) if k == 0 else block(torch.cat([h, f], dim=-1))
        h = self.final(h)
        return self.fc_out(F.relu(h) if self.output_relu else h)

"""Tri-planes: the one plane order, the one point normalisation, and tri-plane sampling.

Conventions of the 3-D domains (written down here once and used by the PointNet scatter, the
VAE, the MLP, the LDM latent and the mesher):

* **Frame.** Shapes live in the ONet unit-cube frame: ``|p| <= 0.5`` on every axis, padded by
  ``padding`` (0.1) to the box ``B = (1 + padding) * [-0.5, 0.5]^3``. Every point is normalised
  *once*, with :func:`normalize_points` (``u = p / half_extent``, ``half_extent = (1+padding)/2``),
  into ``[-1, 1]^3``; the PointNet, the planes and the MLP all see ``u``, never ``p``.
* **Plane order** :data:`PLANES` = ``(xy, xz, yz)``. Plane ``k`` is indexed by the axes
  :data:`PLANE_AXES` ``[k]`` = ``(width axis, height axis)``: ``xy`` has x along the width and y
  along the height, ``xz`` x / z, ``yz`` y / z. Latents, decoded planes and the LDM tensor keep
  this order (the LDM tensor stacks the three ``C``-channel planes on channels as
  ``[xy | xz | yz]``).
* **Cells and sampling.** A plane of resolution ``R`` has cells of width ``2/R``; the point
  ``u`` falls in cell ``floor((u + 1) / 2 * R)`` (clamped to ``[0, R-1]``) and planes are read
  with ``grid_sample(align_corners=False, padding_mode="border")`` (:func:`ddmi.fields.sample_plane`)
  so cell ``i`` is centred at ``-1 + (2i + 1)/R``: the PointNet writes features exactly where
  the MLP reads them (no half-cell offset, unlike ConvONet; docs/official-code.md §12.2.6).
* **Layout.** Multi-plane tensors are ``(B, 3, C, H, W)``; inside the conv VAE the planes are
  folded into the batch as ``(B*3, C, H, W)`` (sample-major, plane-minor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PLANES = ("xy", "xz", "yz")
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


def half_extent(padding: float) -> float:
    """Half the side of the padded box: ``(1 + padding) / 2`` (0.55 for ONet's 0.1)."""
    return (1.0 + padding) / 2.0


def normalize_points(points: torch.Tensor, padding: float) -> torch.Tensor:
    """World points ``(..., 3)`` in the padded unit cube -> ``[-1, 1]^3`` (clamped)."""
    return (points / half_extent(padding)).clamp(-1.0, 1.0)


def plane_coords(u: torch.Tensor) -> torch.Tensor:
    """``u (B, N, 3)`` -> the 2-D coordinates on each plane, ``(B, 3, N, 2)`` in PLANES order."""
    return torch.stack([u[..., list(axes)] for axes in PLANE_AXES], dim=1)


def cell_index(u: torch.Tensor, resolution: int) -> torch.Tensor:
    """Flat cell index ``row * R + col`` on each plane: ``u (B, N, 3)`` -> ``(B, 3, N)`` long."""
    xy = plane_coords(u)
    cells = ((xy + 1.0) * (resolution / 2.0)).floor().long().clamp_(0, resolution - 1)
    return cells[..., 1] * resolution + cells[..., 0]


def triplane_grid(u: torch.Tensor) -> torch.Tensor:
    """``u (B, N, 3)`` -> the ``grid_sample`` grid of the three planes, ``(B*3, 1, N, 2)``."""
    b, n, _ = u.shape
    return plane_coords(u).reshape(b * 3, 1, n, 2)


# --- the official (ConvONet) frame, for imported official checkpoints ------------------------
# ConvONet normalises every plane's coordinate pair on its own, q = p / (1 + padding + 1e-5) + 0.5,
# then sets q >= 1 to 1 - 1e-5 and q < 0 to 0 (not a clamp to [0, 1 - 1e-5]: q in [1 - 1e-5, 1) is
# kept; note the 1e-5 the ddmi frame does not have), writes the PointNet
# features to cell floor(q R), and reads the planes at 2q - 1 with align_corners=True: half a cell
# away from where it wrote them (docs/official-code.md §12.2.6).


def convonet_plane_coords(p: torch.Tensor, padding: float) -> torch.Tensor:
    """World points ``p (B, N, 3)`` -> ConvONet's ``q`` in ``[0, 1)`` on each plane,
    ``(B, 3, N, 2)`` in PLANES order."""
    q = plane_coords(p) / (1.0 + padding + 1e-5) + 0.5
    q = torch.where(q >= 1.0, torch.full_like(q, 1.0 - 1e-5), q)
    return torch.where(q < 0.0, torch.zeros_like(q), q)


def convonet_cell_index(p: torch.Tensor, resolution: int, padding: float) -> torch.Tensor:
    """ConvONet's flat cell index ``floor(q_1 R) * R + floor(q_0 R)`` of world points ``p (B, N, 3)``
    on each plane: ``(B, 3, N)`` long (same layout as :func:`cell_index`)."""
    cells = (convonet_plane_coords(p, padding) * resolution).long()
    return cells[..., 1] * resolution + cells[..., 0]


def convonet_grid(p: torch.Tensor, padding: float) -> torch.Tensor:
    """World points ``p (B, N, 3)`` -> ConvONet's query grid ``2q - 1``, ``(B*3, 1, N, 2)`` (read
    with ``align_corners=True``)."""
    b, n, _ = p.shape
    return (2.0 * convonet_plane_coords(p, padding) - 1.0).reshape(b * 3, 1, n, 2)


def sample_triplane(planes: torch.Tensor, u: torch.Tensor | None = None, *,
                    grid: torch.Tensor | None = None, reduce: str = "sum",
                    align_corners: bool = False) -> torch.Tensor:
    """Sum of the bilinear samples of the three planes ``(B, 3, C, H, W)`` at ``u (B, N, 3)``
    (or at a precomputed ``grid = triplane_grid(u)``, to share it between scales).

    Returns ``(B, N, C)``, or with ``reduce="concat"`` the three samples concatenated in PLANES
    order, ``(B, N, 3C)`` (the NeRF field). Same convention as :func:`ddmi.fields.sample_plane`
    (``align_corners=False``, border padding); ``align_corners=True`` is the official one
    (imported checkpoints).
    """
    b, k, c, h, w = planes.shape
    grid = triplane_grid(u) if grid is None else grid
    feats = F.grid_sample(planes.reshape(b * k, c, h, w), grid.to(planes.dtype), mode="bilinear",
                          padding_mode="border", align_corners=align_corners)  # (B*3, C, 1, N)
    if reduce == "concat":
        return feats.reshape(b, k * c, -1).transpose(1, 2)
    assert reduce == "sum", f"unknown reduce {reduce!r}"
    return feats.reshape(b, k, c, -1).sum(1).transpose(1, 2)


def fold(planes: torch.Tensor) -> torch.Tensor:
    """``(B, 3, C, H, W)`` -> ``(B*3, C, H, W)``."""
    return planes.flatten(0, 1)


def unfold(x: torch.Tensor) -> torch.Tensor:
    """``(B*3, C, H, W)`` -> ``(B, 3, C, H, W)``."""
    return x.reshape(-1, 3, *x.shape[1:])

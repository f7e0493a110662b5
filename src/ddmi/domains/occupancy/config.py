"""The occupancy domain's config section ``shapes`` (its dataclass schema; see :mod:`ddmi.config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShapesConfig:
    """The occupancy (3-D shape) domain: ONet data sampling, PointNet, meshing (docs/official-code.md §3.2, 7)."""

    classes: list[str] | None = None   # synsets to use; none = every synset folder
    num_points: int = 3000             # encoder input: surface points drawn per shape
    point_noise: float = 0.005         # std of the Gaussian noise added to them
    num_queries: int = 2048            # occupancy supervision points per shape
    padding: float = 0.1               # the box is (1 + padding) * [-0.5, 0.5]^3
    threshold: float = 0.2             # occupancy probability of the extracted surface
    pointnet_hidden: int = 256
    pointnet_blocks: int = 7
    pointnet_channels: int = 32        # channels of the PointNet planes (the VAE input)
    # --- official compatibility (set by the importer of official checkpoints; docs/official-checkpoints.md).
    # ConvONet frame: the official PointNet (fc_pos) and MLP3D (net_p) see the raw points, and each plane's
    # coordinates are q = p / (1 + padding + 1e-5) + 0.5 with q >= 1 set to 1 - 1e-5 and q < 0 to 0 (cells
    # floor(q R), queries at 2q - 1). ddmi: one normalisation u = clamp(p / half_extent, -1, 1) for everything.
    convonet_coords: bool = False
    # official: the planes are read with align_corners=True, half a cell away from the PointNet's cells
    # (docs/official-code.md §12.2.6); ddmi: align_corners=False, where the cells are written
    align_corners: bool = False
    # official: the cross-plane blocks concatenate the planes as [xy | yz | xz] (GroupNorm groups straddle
    # the plane boundaries, so the order matters); ddmi (none): PLANES order [xy | xz | yz]
    cross_plane_order: list[str] | None = None
    # official stage 1 decodes the latent stacked [xy, yz, xz] while decode() slices [xy, xz, yz]
    # (docs/official-code.md §12.2.1): the reconstruction paths (training loss, previews, probes, reconstruct) decode the posterior
    # restacked in this order. ddmi (none): as encoded. The stage-2 latent stays [xy, xz, yz] either way,
    # the order the official occupancy LDM was trained on.
    stage1_latent_planes: list[str] | None = None
    # official MLP3D: logit = net_out(h); ddmi: logit = fc_out(relu(h)) (ResnetBlockFC is pre-activation,
    # so ddmi activates the last block's output as every block does its input)
    mlp_output_relu: bool = True

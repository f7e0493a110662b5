"""The occupancy domain's config section ``shapes`` (its dataclass schema; see :mod:`ddmi.config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShapesConfig:
    """The occupancy (3-D shape) domain: ONet data sampling, PointNet, meshing (spec 3.2, 7)."""

    classes: list[str] | None = None   # synsets to use; none = every synset folder
    num_points: int = 3000             # encoder input: surface points drawn per shape
    point_noise: float = 0.005         # std of the Gaussian noise added to them
    num_queries: int = 2048            # occupancy supervision points per shape
    padding: float = 0.1               # the box is (1 + padding) * [-0.5, 0.5]^3
    threshold: float = 0.2             # occupancy probability of the extracted surface
    pointnet_hidden: int = 256
    pointnet_blocks: int = 7
    pointnet_channels: int = 32        # channels of the PointNet planes (the VAE input)

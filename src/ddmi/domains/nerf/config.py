"""The nerf domain's config section ``nerf`` (its dataclass schema; see :mod:`ddmi.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NeRFConfig:
    """The NeRF (radiance field) domain: srn-cars data, coloured PointNet, field, rendering
    (docs/official-code.md §3.3, 6). Depths ``near``/``far`` are along the camera axis (rays are not normalised)."""

    category: str = "cars"             # ROOT/<category>/sampled/*.npz
    val_fraction: float = 0.1          # held-out objects when there are no train.lst / val.lst
    num_points: int = 2048             # encoder input: coloured points per object
    point_noise: float = 0.0
    points_scale: float = 1.0          # multiplies the clouds' xyz to reach the cameras' world frame
    half_extent: float = 1.5           # world box [-h, h]^3 = the planes' extent (u = p / h)
    fov: float | None = None        # horizontal field of view (rad); none = srn-cars 0.6911112
    num_rays: int = 5000               # supervision rays per object per step
    ray_views: int = 1                 # views those rays are drawn from
    near: float = 2.0
    far: float = 6.0
    num_samples: int = 256             # stratified samples per ray (training)
    render_samples: int = 256          # stratified samples per ray (rendering)
    num_importance: int = 0            # extra importance samples per ray (same field)
    perturb: bool = True               # jitter the stratified samples in training
    white_background: bool = True
    render_chunk: int = 1024           # rays per chunk when rendering (x samples = field points)
    rgb_weight: float = 20.0           # loss: rgb_weight * sum over rays of |rgb - gt|
    point_rgb_weight: float = 0.0      # optional: + weight * sum over the encoder's points of |field rgb - point rgb|
    mlp_depth: int = 6                 # field: layers of width mlp.hidden
    skips: list[int] = field(default_factory=lambda: [2, 4])
    multires: int = 10                 # positional-encoding frequencies of the position
    multires_views: int = 4            # ... and of the view direction
    pointnet_hidden: int = 256
    pointnet_blocks: int = 7
    pointnet_channels: int = 32
    posterior_logvar_init: float = -6.0  # initial posterior log-variance (std 0.05); see docs/nerf.md
    turntable_frames: int = 24         # `ddmi sample`: frames per turntable
    turntable_radius: float = 4.0
    turntable_elevation: float = 20.0  # degrees above the horizon
    # --- official compatibility (set by the importer of official checkpoints; docs/official-checkpoints.md).
    # Encoder frame: with a number, the PointNet sees the raw coloured points [xyz, rgb] and its cells are
    # ConvONet's, q = p / (1 + convonet_padding + 1e-5) + 0.5 (q >= 1 -> 1 - 1e-5, q < 0 -> 0; official
    # padding 0.1: a box of +-0.55 that does not match the render box, docs/official-code.md §12.2.4). ddmi (none):
    # [p / half_extent, 2 rgb - 1], the same frame as the renderer.
    convonet_padding: float | None = None
    # Field frame: "world" (official) queries the field at world points: the planes are read at
    # p / half_extent (official half_extent 3.5) and the positional encoding is of p itself; "box" (ddmi)
    # queries it at u = p / half_extent and encodes u.
    field_frame: str = "box"
    align_corners: bool = False          # official: planes read with align_corners=True (ddmi: False)
    # official MLPNeRF activations are nn.LeakyReLU(True), i.e. slope 1 = identity (docs/official-code.md §12.2.3); ddmi: relu
    activation: str = "relu"
    mask_outside_box: bool = True        # ddmi: density 0 outside |u| <= 1; official: none (border padding)
    # official: the cross-plane blocks concatenate [xy | yz | xz]; ddmi (none): [xy | xz | yz]
    cross_plane_order: list[str] | None = None
    # official NeRF stacks the latent [xy, yz, xz] in both stages (decode() slices [xy, xz, yz]: the
    # official mismatch of docs/official-code.md §12.2.1, which NeRF has in both stages); ddmi (none): [xy, xz, yz]
    latent_planes: list[str] | None = None
    depth_spacing: str = "bins"          # official "linspace": near (1-t) + far t, t = linspace(0, 1, S)
    last_delta: float | None = None      # official 1e10 (acc = 1: no background); ddmi: the last interval ends at far
    pixel_offset: float = 0.5            # official 0: rays through the pixels' corners (get_rays); ddmi: centres

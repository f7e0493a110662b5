"""Official NeRF checkpoints (``LocalPoolPointnet(dim=6)`` + ``Autoencoder3D`` + ``MLPNeRF``) in ddmi.

:func:`official_config` turns the official stage-1 sections into config overrides of ddmi's NeRF
model (sizes from the tensor shapes, the official-compatibility switches of
:class:`~ddmi.domains.nerf.config.NeRFConfig` on); :func:`official_state` maps the tensors onto
that model's state dict. Both work on meta tensors.

Read from the shapes: the PointNet sizes, every VAE size but the plane resolution, and the
field's width ``W``, depth ``D``, ``skips`` and both positional-encoding frequency counts
(``in_channels_xyz = 3 out_ch + 3 (1 + 2 multires)``, ``in_channels_dir = 3 (1 + 2 multires_views)``).
Not in the state dict: the plane resolution and ConvONet ``padding`` (``official``, else the
preset), the ray settings of the official ``TN`` block (``N_samples``, ``N_importance``,
``white_bkgd``; else the preset) and the constants of the official code, which are not settings
there either: the render frame ``pts / 3.5``, depths ``near = 2``, ``far = 6`` and the field of view
0.6911112070083618.

Layouts that differ (fixed here by permuting weight columns, exact): the official field input is
``[xy | yz | xz]`` plane features then the interleaved PE ``[x, sin(x), cos(x), sin(2x), ...]``;
ddmi's is ``[xy | xz | yz]`` then ``[x, sin(2^k x)_k, cos(2^k x)_k]``; the official skip layers
take ``[input, h]``, ddmi's ``[h, input]``.
"""

from __future__ import annotations

import re

import torch
from omegaconf import DictConfig

from ddmi.errors import CheckpointError
from ddmi.nn.pointnet import official_pointnet_sizes, official_pointnet_state
from ddmi.vae.triplane_coords import PLANES
from ddmi.vae.triplanes import (
    fresh_spectral_state,
    official_dict_get,
    official_triplane_overrides,
    official_triplane_state,
    triplane_spec,
)

OFFICIAL_PLANE_ORDER = ["xy", "yz", "xz"]   # cross-plane concatenation, latent stacking, field features
RENDER_HALF_EXTENT = 3.5                    # the official renderer reads the planes at pts / 3.5
NEAR, FAR = 2.0, 6.0
FOV = 0.6911112070083618
LAST_DELTA = 1e10


def _sections(sections: dict) -> tuple[dict, dict, dict]:
    missing = [k for k in ("pointnet", "vaemodel", "mlp") if k not in sections]
    if missing:
        raise CheckpointError(f"official NeRF checkpoint without {missing} (has {sorted(sections)})")
    return sections["pointnet"], sections["vaemodel"], sections["mlp"]


def field_sizes(mlp: dict[str, torch.Tensor], plane_channels: int) -> dict:
    """``D``, ``W``, ``skips``, ``multires``, ``multires_views`` of an official ``MLPNeRF`` state
    dict whose planes have ``plane_channels`` channels (one scale: official NeRF has no HDBPE)."""
    layers = sorted({int(m.group(1)) for k in mlp for m in [re.match(r"xyz_encoding_(\d+)\.0\.", k)] if m})
    if not layers or layers != list(range(1, len(layers) + 1)):
        raise CheckpointError("not an official MLPNeRF state dict (no xyz_encoding_1..D)")
    width = mlp["xyz_encoding_1.0.weight"].shape[0]
    in_xyz = mlp["xyz_encoding_1.0.weight"].shape[1]
    skips = [i - 1 for i in layers[1:] if mlp[f"xyz_encoding_{i}.0.weight"].shape[1] != width]
    for i in skips:
        if mlp[f"xyz_encoding_{i + 1}.0.weight"].shape[1] != width + in_xyz:
            raise CheckpointError(f"MLPNeRF layer {i + 1} is neither a plain nor a skip layer")
    in_dir = mlp["dir_encoding.0.weight"].shape[1] - width
    pe_xyz = in_xyz - 3 * plane_channels
    if pe_xyz < 3 or (pe_xyz - 3) % 6 or in_dir < 3 or (in_dir - 3) % 6:
        raise CheckpointError(f"MLPNeRF input widths {in_xyz} / {in_dir} are not {3 * plane_channels} plane "
                              "features + positional encodings of 3-D points / directions")
    return dict(depth=len(layers), width=width, skips=skips, multires=(pe_xyz - 3) // 6,
                multires_views=(in_dir - 3) // 6)


def official_config(sections: dict[str, dict[str, torch.Tensor]], cfg: DictConfig,
                    official: dict | None = None) -> dict:
    """Overrides under which ddmi's NeRF model computes the official function."""
    pointnet, vaemodel, mlp = _sections(sections)
    over = official_triplane_overrides(vaemodel, cfg, official)
    if over["vae"]["hdbpe_resolutions"]:
        raise CheckpointError("official NeRF models read a single plane per projection (hdbf_resolutions []); "
                              f"this one has HDBPE heads at {over['vae']['hdbpe_resolutions']}")
    pn = official_pointnet_sizes(pointnet)
    if pn["dim"] != 6:
        raise CheckpointError(f"an official NeRF PointNet takes coloured points (dim 6), this one dim {pn['dim']}")
    if vaemodel["encoder.conv_in.weight"].shape[1] != pn["channels"]:
        raise CheckpointError("the PointNet's c_dim is not the VAE's input channels")
    f = field_sizes(mlp, over["vae"]["plane_channels"])
    tn = official_dict_get(official, "model", "TN") or official_dict_get(official, "TN") or {}
    for ours, theirs in (("multires", "multires"), ("multires_views", "multires_views")):
        if theirs in tn and int(tn[theirs]) != f[ours]:
            raise CheckpointError(f"official TN.{theirs} = {tn[theirs]} contradicts the field's input widths")
    padding = official_dict_get(official, "data", "padding", default=0.1)
    nerf = dict(
        pointnet_hidden=pn["hidden"], pointnet_blocks=pn["blocks"], pointnet_channels=pn["channels"],
        mlp_depth=f["depth"], skips=f["skips"], multires=f["multires"], multires_views=f["multires_views"],
        convonet_padding=float(padding), field_frame="world", half_extent=RENDER_HALF_EXTENT,
        align_corners=True, activation="identity", mask_outside_box=False,
        cross_plane_order=list(OFFICIAL_PLANE_ORDER), latent_planes=list(OFFICIAL_PLANE_ORDER),
        depth_spacing="linspace", last_delta=LAST_DELTA, pixel_offset=0.0, near=NEAR, far=FAR, fov=FOV)
    if "N_samples" in tn:
        nerf["num_samples"] = nerf["render_samples"] = int(tn["N_samples"])
    if "N_importance" in tn:
        nerf["num_importance"] = int(tn["N_importance"])
    if "white_bkgd" in tn:
        nerf["white_background"] = bool(tn["white_bkgd"])
    over["nerf"] = nerf
    over["mlp"] = {"hidden": f["width"]}
    return over


def feature_columns(plane_channels: int) -> list[int]:
    """For each ddmi plane-feature column (``[xy | xz | yz]``), the official column (``[xy | yz | xz]``)."""
    slot = {name: OFFICIAL_PLANE_ORDER.index(name) for name in PLANES}
    return [slot[name] * plane_channels + c for name in PLANES for c in range(plane_channels)]


def pe_columns(multires: int) -> list[int]:
    """For each column of ddmi's PE ``[x, sin(2^k x)_k, cos(2^k x)_k]`` of a 3-D input, the
    official column (``[x, sin(x), cos(x), sin(2x), cos(2x), ...]``)."""
    cols = list(range(3))
    cols += [3 + 6 * k + d for k in range(multires) for d in range(3)]          # sin
    cols += [3 + 6 * k + 3 + d for k in range(multires) for d in range(3)]      # cos
    return cols


def input_columns(plane_channels: int, multires: int) -> list[int]:
    """Official columns of ddmi's field input ``[plane features, PE(position)]``."""
    feats = 3 * plane_channels
    return feature_columns(plane_channels) + [feats + c for c in pe_columns(multires)]


def official_mlp_state(mlp: dict[str, torch.Tensor], plane_channels: int, multires: int, multires_views: int
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``MLPNeRF`` -> :class:`~ddmi.domains.nerf.model.NeRFMLP` (input columns permuted to ddmi's layout)."""
    f = field_sizes(mlp, plane_channels)
    width, cols = f["width"], input_columns(plane_channels, multires)
    n_in = len(cols)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(official: str, ours: str, weight: torch.Tensor | None = None) -> None:
        state[f"{ours}.weight"] = mlp[f"{official}.weight"] if weight is None else weight
        state[f"{ours}.bias"] = mlp[f"{official}.bias"]
        used.update({f"{official}.weight", f"{official}.bias"})

    for i in range(f["depth"]):
        w = mlp[f"xyz_encoding_{i + 1}.0.weight"]
        if i == 0:
            w = w[:, cols]
        elif i in f["skips"]:                                   # official [input, h] -> ddmi [h, input]
            w = torch.cat([w[:, n_in:], w[:, :n_in][:, cols]], dim=1)
        take(f"xyz_encoding_{i + 1}.0", f"layers.{i}", w)
    take("sigma", "sigma")
    take("xyz_encoding_final", "feature")
    wd = mlp["dir_encoding.0.weight"]
    take("dir_encoding.0", "rgb_hidden", torch.cat([wd[:, :width], wd[:, width:][:, pe_columns(multires_views)]], 1))
    take("rgb.0", "rgb")
    return state, [k for k in mlp if k not in used]


def official_mlp_input(x: torch.Tensor, plane_channels: int, multires: int, multires_views: int
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """An official ``MLPNeRF`` input row ``(..., in_xyz + in_dir)`` as the arguments of
    :meth:`NeRFMLP.network`: ``([features, PE(position)] in ddmi's layout, PE(direction))``."""
    n_in = 3 * plane_channels + 3 * (1 + 2 * multires)
    cols = input_columns(plane_channels, multires)
    feats = 3 * plane_channels
    xin = x[..., :n_in][..., cols]
    return [xin[..., :feats], xin[..., feats:]], x[..., n_in:][..., pe_columns(multires_views)]


def official_state(sections: dict[str, dict[str, torch.Tensor]], cfg: DictConfig
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official sections as the state dict of ddmi's NeRF model for ``cfg`` (which carries
    :func:`official_config`'s overrides): ``(state, unused "section.key" names)``."""
    pointnet, vaemodel, mlp = _sections(sections)
    nc = cfg.nerf
    spec = triplane_spec(cfg.vae, in_channels=nc.pointnet_channels, resolution=cfg.data.resolution,
                         cross_plane_order=nc.cross_plane_order, latent_order=nc.latent_planes)
    parts = {"pointnet": official_pointnet_state(pointnet), "vae": official_triplane_state(vaemodel, spec),
             "mlp": official_mlp_state(mlp, cfg.vae.plane_channels, nc.multires, nc.multires_views)}
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for name, (part, left) in parts.items():
        state.update({f"{name}.{k}": v for k, v in part.items()})
        unused += [f"{ {'vae': 'vaemodel'}.get(name, name)}.{k}" for k in left]
    if cfg.loss.sn_reg:       # ddmi's own regulariser state, fresh (not part of the official weights)
        state.update({f"spectral.{k}": v for k, v in fresh_spectral_state(spec, cfg.loss.sn_power_iters).items()})
    unused += [f"{s}.*" for s in sections if s not in ("pointnet", "vaemodel", "mlp")]
    return state, unused

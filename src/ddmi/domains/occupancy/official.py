"""Official occupancy checkpoints (``LocalPoolPointnet`` + ``Autoencoder3D`` + ``MLP3D``) in ddmi.

:func:`official_config` turns the official stage-1 sections into config overrides of ddmi's
occupancy model (sizes from the tensor shapes, the official-compatibility switches of
:class:`~ddmi.domains.occupancy.config.ShapesConfig` on); :func:`official_state` renames the
tensors onto that model's state dict. Both work on meta tensors (shape-only manifests).

What cannot be read from the shapes: the plane resolution (``ddconfig.resolution`` /
ConvONet ``plane_resolution`` of ``official``, else the preset's ``data.resolution``), the
ConvONet ``padding`` (``official``, else ``shapes.padding``) and the mid-attention head count
(``attn_type`` of ``official``: ``vanilla`` = 1 head, else the preset's ``vae.mid_attn_heads``).
"""

from __future__ import annotations

import re

import torch
from omegaconf import DictConfig

from ddmi.errors import CheckpointError
from ddmi.nn.pointnet import official_pointnet_sizes, official_pointnet_state
from ddmi.vae.triplanes import (
    fresh_spectral_state,
    official_dict_get,
    official_triplane_overrides,
    official_triplane_state,
    triplane_spec,
)

#: the official plane orders (docs/official-code.md §12.2.1): cross-plane concatenation and the stage-1 latent
OFFICIAL_CROSS_PLANE_ORDER = ["xy", "yz", "xz"]
OFFICIAL_STAGE1_LATENT = ["xy", "yz", "xz"]


def official_config(sections: dict[str, dict[str, torch.Tensor]], cfg: DictConfig,
                    official: dict | None = None) -> dict:
    """Overrides under which ddmi's occupancy model computes the official function."""
    pointnet, vaemodel, mlp = _sections(sections)
    over = official_triplane_overrides(vaemodel, cfg, official)
    pn = official_pointnet_sizes(pointnet)
    if pn["dim"] != 3:
        raise CheckpointError(f"an occupancy PointNet takes 3-D points, this one {pn['dim']}-D")
    vae_in = vaemodel["encoder.conv_in.weight"].shape[1]
    if vae_in != pn["channels"]:
        raise CheckpointError(f"the PointNet writes {pn['channels']} channels, the VAE reads {vae_in}")
    padding = official_dict_get(official, "data", "padding", default=cfg.shapes.padding)
    scales = len(_res_blocks(mlp))
    if scales != len(over["vae"]["hdbpe_resolutions"]) + 1 + 1:
        raise CheckpointError(f"MLP3D has {scales} residual blocks; the VAE decodes "
                              f"{len(over['vae']['hdbpe_resolutions']) + 1} scales (+1 final block expected)")
    over["shapes"] = dict(
        pointnet_hidden=pn["hidden"], pointnet_blocks=pn["blocks"], pointnet_channels=pn["channels"],
        padding=float(padding), convonet_coords=True, align_corners=True,
        cross_plane_order=list(OFFICIAL_CROSS_PLANE_ORDER), stage1_latent_planes=list(OFFICIAL_STAGE1_LATENT),
        mlp_output_relu=False)
    over["mlp"] = {"hidden": mlp["net_p.weight"].shape[0]}
    return over


def _sections(sections: dict) -> tuple[dict, dict, dict]:
    missing = [k for k in ("pointnet", "vaemodel", "mlp") if k not in sections]
    if missing:
        raise CheckpointError(f"official occupancy checkpoint without {missing} (has {sorted(sections)})")
    return sections["pointnet"], sections["vaemodel"], sections["mlp"]


def _res_blocks(mlp: dict) -> list[int]:
    return sorted({int(m.group(1)) for k in mlp for m in [re.match(r"net_res(\d+)\.", k)] if m})


def official_mlp_state(mlp: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``MLP3D`` (``net_p``, ``net_res1..n``, ``net_out``) -> :class:`OccupancyMLP`
    (``fc_p``, ``blocks.0..n-2``, ``final``, ``fc_out``)."""
    blocks = _res_blocks(mlp)
    names = {"net_p": "fc_p", "net_out": "fc_out", f"net_res{blocks[-1]}": "final"}
    names.update({f"net_res{b}": f"blocks.{i}" for i, b in enumerate(blocks[:-1])})
    state, unused = {}, []
    for key, value in mlp.items():
        head, _, rest = key.partition(".")
        if head in names:
            state[f"{names[head]}.{rest}"] = value
        else:
            unused.append(key)
    return state, unused


def official_state(sections: dict[str, dict[str, torch.Tensor]], cfg: DictConfig
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official sections as the state dict of ddmi's occupancy model for ``cfg`` (which
    carries :func:`official_config`'s overrides): ``(state, unused "section.key" names)``."""
    pointnet, vaemodel, mlp = _sections(sections)
    spec = triplane_spec(cfg.vae, in_channels=cfg.shapes.pointnet_channels, resolution=cfg.data.resolution,
                         cross_plane_order=cfg.shapes.cross_plane_order)
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for name, (part, left) in {"pointnet": official_pointnet_state(pointnet),
                               "vae": official_triplane_state(vaemodel, spec),
                               "mlp": official_mlp_state(mlp)}.items():
        state.update({f"{name}.{k}": v for k, v in part.items()})
        section = {"vae": "vaemodel"}.get(name, name)
        unused += [f"{section}.{k}" for k in left]
    if cfg.loss.sn_reg:       # ddmi's own regulariser state, fresh (not part of the official weights)
        state.update({f"spectral.{k}": v for k, v in fresh_spectral_state(spec, cfg.loss.sn_power_iters).items()})
    unused += [f"{s}.*" for s in sections if s not in ("pointnet", "vaemodel", "mlp")]
    return state, unused

"""PointNet with local pooling into three planes (ConvONet ``pointnet_local_pool``, docs/official-code.md §3.2).

Written with ``Tensor.scatter_reduce`` (no torch-scatter). Points are given in the normalised
tri-plane frame ``u`` in ``[-1, 1]^3`` (:mod:`ddmi.vae.triplane_coords`), and features are pooled into and
written to the plane cells of :func:`ddmi.vae.triplane_coords.cell_index`, the cells the MLP later reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddmi.vae.triplane_coords import cell_index, convonet_cell_index


class ResnetBlockFC(nn.Module):
    """Pre-activation residual MLP block: ``shortcut(x) + fc_1(relu(fc_0(relu(x))))``.

    The hidden width is ``min(in, out)``; ``fc_1`` starts at zero and the shortcut is a linear map
    without bias when the widths differ. ``x (..., in)`` -> ``(..., out)``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        hidden = min(in_features, out_features)
        self.fc_0 = nn.Linear(in_features, hidden)
        self.fc_1 = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.fc_1.weight)
        self.shortcut = (nn.Linear(in_features, out_features, bias=False)
                         if in_features != out_features else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.fc_1(F.relu(self.fc_0(F.relu(x))))


def scatter_to_cells(values: torch.Tensor, index: torch.Tensor, cells: int, reduce: str) -> torch.Tensor:
    """``values (B, N, F)`` reduced (``"amax"`` or ``"mean"``) into ``(B, cells, F)`` by
    ``index (B, N)``; cells that receive no point are 0."""
    b, _, f = values.shape
    out = values.new_zeros(b, cells, f)
    return out.scatter_reduce(1, index[..., None].expand(-1, -1, f), values, reduce, include_self=False)


class LocalPoolPointNet(nn.Module):
    """Point cloud ``u (B, N, dim)`` -> three feature planes ``(B, 3, C, R, R)`` (PLANES order).

    The first three channels are the normalised coordinates (they choose the cells); any further
    channels (``dim > 3``, e.g. the colours of the NeRF domain's coloured points) are features.

    ``fc_pos`` (dim -> 2h), ``blocks`` ResnetBlockFC(2h -> h); before every block but the first,
    each point's features are concatenated with the sum over the three planes of the max of the
    features of the points in its cell. ``fc_c`` (h -> C) and a per-cell mean give the planes.
    """

    def __init__(self, *, dim: int = 3, hidden: int = 256, blocks: int = 7, out_channels: int = 32,
                 resolution: int = 64, convonet_padding: float | None = None):
        super().__init__()
        self.resolution = resolution
        # official compatibility: with ``convonet_padding`` the input is raw world points and the
        # cells are ConvONet's (triplane_coords.convonet_cell_index); ddmi: normalised ``u``
        self.convonet_padding = convonet_padding
        self.out_channels = out_channels
        self.fc_pos = nn.Linear(dim, 2 * hidden)
        self.blocks = nn.ModuleList([ResnetBlockFC(2 * hidden, hidden) for _ in range(blocks)])
        self.fc_c = nn.Linear(hidden, out_channels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, n, _ = u.shape
        r = self.resolution
        if self.convonet_padding is None:
            index = cell_index(u[..., :3], r)                             # (B, 3, N)
        else:
            index = convonet_cell_index(u[..., :3], r, self.convonet_padding)
        net = self.blocks[0](self.fc_pos(u))
        for block in self.blocks[1:]:
            pooled = 0
            for k in range(3):
                cells = scatter_to_cells(net, index[:, k], r * r, "amax")
                pooled = pooled + cells.gather(1, index[:, k, :, None].expand(-1, -1, net.shape[-1]))
            net = block(torch.cat([net, pooled], dim=-1))
        c = self.fc_c(net)                                               # (B, N, C)
        planes = [scatter_to_cells(c, index[:, k], r * r, "mean") for k in range(3)]
        return torch.stack(planes, dim=1).transpose(2, 3).reshape(b, 3, self.out_channels, r, r)


# --- official checkpoints (ConvONet ``LocalPoolPointnet``: the same module names) ----------------

def official_pointnet_sizes(sd: dict[str, torch.Tensor]) -> dict:
    """``dim`` (input channels), ``hidden``, ``blocks`` and ``channels`` (``c_dim``) of an official
    ``LocalPoolPointnet`` state dict (from the shapes)."""
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    return dict(dim=sd["fc_pos.weight"].shape[1], hidden=sd["blocks.0.fc_0.weight"].shape[0],
                blocks=len(blocks), channels=sd["fc_c.weight"].shape[0])


def official_pointnet_state(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An official ``LocalPoolPointnet`` state dict as :class:`LocalPoolPointNet`'s: ``(state,
    unused keys)``. The names agree (``fc_pos``, ``blocks.i.{fc_0,fc_1,shortcut}``, ``fc_c``); a
    ConvONet U-Net on the planes (``unet.*``, not used by DDMI) has no place in ddmi."""
    ours = ("fc_pos.", "blocks.", "fc_c.")
    state = {k: v for k, v in sd.items() if k.startswith(ours)}
    return state, [k for k in sd if k not in state]

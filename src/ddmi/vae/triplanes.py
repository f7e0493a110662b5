"""The tri-plane D2C-VAE (occupancy / NeRF, docs/official-code.md §3.2) and the occupancy CFC MLP.

Shapes (``f = 2 ** (len(ch_mult) - 1)``, plane order and layout of :mod:`ddmi.vae.triplane_coords`):

- encoder input: three ``in_channels`` planes ``(B, 3, in_channels, R, R)`` (the PointNet's);
- posterior mean / logvar: ``(B, 3 * embed_dim, R/f, R/f)``, the planes stacked on channels as
  ``[xy | xz | yz]`` (this is also the LDM tensor: no re-ordering anywhere);
- decoded planes (HDBPE): a list, coarse to fine, of ``(B, 3, plane_channels, r, r)`` for every
  ``r`` in ``sorted(hdbpe_resolutions) + [R]``.

The conv weights are shared by the three planes (they run folded into the batch); at every
resolution in ``inter_attn_resolutions`` and in the middle block, a :class:`CrossPlaneBlock`
concatenates the three planes on channels and mixes them (ResBlock -> attention -> ResBlock over
``3C`` channels) at aligned pixel indices. Each plane has its own 1x1 ``quant_conv`` and
``post_quant_conv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ddmi.errors import CheckpointError
from ddmi.nn.blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from ddmi.vae.planes import ConvVAE, ConvVAESpec
from ddmi.vae.triplane_coords import PLANES, fold, unfold


@dataclass
class TriplaneVAESpec(ConvVAESpec):
    inter_attn_resolutions: tuple[int, ...] = ()
    # official compatibility (defaults = ddmi): the order, as indices into PLANES (xy, xz, yz), in
    # which a CrossPlaneBlock concatenates the planes on channels (official: xy, yz, xz: its
    # GroupNorm groups straddle plane boundaries, so the order matters), and the order in which
    # the encoder stacks the per-plane posteriors into the latent (official NeRF: xy, yz, xz).
    cross_plane_order: tuple[int, ...] = (0, 1, 2)
    latent_order: tuple[int, ...] = (0, 1, 2)


class CrossPlaneBlock(nn.Module):
    """``(B*3, C, H, W)`` -> concatenate the planes of each sample on channels ``(B, 3C, H, W)``
    -> ResBlock -> attention -> ResBlock -> split back to ``(B*3, C, H, W)``.

    ``order``: the planes (indices into PLANES) in the order they are concatenated."""

    def __init__(self, channels: int, dropout: float = 0.0, order: tuple[int, ...] = (0, 1, 2)):
        super().__init__()
        c3 = 3 * channels
        self.order = tuple(order)
        assert sorted(self.order) == [0, 1, 2], f"not a plane order: {order}"
        self.body = nn.Sequential(ResnetBlock(c3, c3, dropout), AttnBlock(c3), ResnetBlock(c3, c3, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bk, c, h, w = x.shape
        if self.order == (0, 1, 2):
            return self.body(x.reshape(bk // 3, 3 * c, h, w)).reshape(bk, c, h, w)
        planes = x.reshape(bk // 3, 3, c, h, w)
        out = self.body(planes[:, list(self.order)].reshape(bk // 3, 3 * c, h, w)).reshape(bk // 3, 3, c, h, w)
        inverse = [self.order.index(k) for k in range(3)]
        return out[:, inverse].reshape(bk, c, h, w)


def _mid(block_in: int, s: TriplaneVAESpec) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(block_in, block_in, s.dropout), AttnBlock(block_in, s.mid_attn_heads),
                         ResnetBlock(block_in, block_in, s.dropout),
                         CrossPlaneBlock(block_in, s.dropout, s.cross_plane_order))


class TriplaneEncoder(nn.Module):
    """Planes ``(B, 3, in, R, R)`` -> posterior parameters ``(B, 2 * 3 * embed_dim, R/f, R/f)``
    ordered ``[mean_xy, mean_xz, mean_yz, logvar_xy, logvar_xz, logvar_yz]`` (the planes in
    ``spec.latent_order``, by default PLANES order)."""

    def __init__(self, spec: TriplaneVAESpec):
        super().__init__()
        s = spec
        self.conv_in = nn.Conv2d(s.in_channels, s.ch, 3, padding=1)
        blocks: list[nn.Module] = []
        res, block_in = s.resolution, s.ch
        for level, mult in enumerate(s.ch_mult):
            block_out = s.ch * mult
            for _ in range(s.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, s.dropout))
                block_in = block_out
                if res in s.attn_resolutions:
                    blocks.append(AttnBlock(block_in))
            if res in s.inter_attn_resolutions:
                blocks.append(CrossPlaneBlock(block_in, s.dropout, s.cross_plane_order))
            if level != len(s.ch_mult) - 1:
                blocks.append(Downsample(block_in))
                res //= 2
        self.down = nn.Sequential(*blocks)
        self.mid = _mid(block_in, s)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * s.z_channels, 3, padding=1)
        self.quant_conv = nn.ModuleList([nn.Conv2d(2 * s.z_channels, 2 * s.embed_dim, 1) for _ in range(3)])
        self.latent_order = tuple(s.latent_order)

    @torch.no_grad()
    def init_posterior(self, *, logvar: float) -> None:
        """Start the posterior means at the prior's scale and their noise small (the NeRF domain
        uses it; docs/nerf.md, "Colour through the latent").

        ``conv_out`` and every ``quant_conv`` get unit-gain weights (``std = 1 / sqrt(fan_in)``,
        zero bias), so the posterior means of different inputs start about one prior standard
        deviation apart instead of ~0.2; the log-variance half of each ``quant_conv`` starts as
        the constant ``logvar``."""
        for conv in [self.conv_out, *self.quant_conv]:
            nn.init.normal_(conv.weight, std=conv.weight[0].numel() ** -0.5)
            nn.init.zeros_(conv.bias)
        for conv in self.quant_conv:
            half = conv.out_channels // 2                     # output channels: [mean | logvar]
            conv.weight[half:].zero_()
            conv.bias[half:].fill_(logvar)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(fold(planes))))
        h = unfold(self.conv_out(F.silu(self.norm_out(h))))                # (B, 3, 2z, r, r)
        per_plane = [conv(h[:, k]).chunk(2, dim=1) for k, conv in enumerate(self.quant_conv)]
        per_plane = [per_plane[k] for k in self.latent_order]
        return torch.cat([m for m, _ in per_plane] + [lv for _, lv in per_plane], dim=1)


class TriplaneDecoder(nn.Module):
    """Latent ``(B, 3 * embed_dim, r, r)`` -> HDBPE tri-planes, coarse to fine (module docstring)."""

    def __init__(self, spec: TriplaneVAESpec):
        super().__init__()
        s = spec
        block_in = s.ch * s.ch_mult[-1]
        res = s.latent_resolution
        self.post_quant_conv = nn.ModuleList([nn.Conv2d(s.embed_dim, s.z_channels, 1) for _ in range(3)])
        self.conv_in = nn.Conv2d(s.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, s)
        self.levels = nn.ModuleList()
        self.heads = nn.ModuleDict()
        for level in reversed(range(len(s.ch_mult))):
            block_out = s.ch * s.ch_mult[level]
            blocks: list[nn.Module] = []
            for _ in range(s.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, s.dropout))
                block_in = block_out
                if res in s.attn_resolutions:
                    blocks.append(AttnBlock(block_in))
            if res in s.inter_attn_resolutions:
                blocks.append(CrossPlaneBlock(block_in, s.dropout, s.cross_plane_order))
            if res in s.hdbpe_resolutions:
                self.heads[str(res)] = nn.Conv2d(block_in, s.plane_channels, 1)
            self.levels.append(nn.Sequential(*blocks))
            if level != 0:
                self.levels.append(Upsample(block_in))
                res *= 2
        missing = set(s.hdbpe_resolutions) - {int(k) for k in self.heads}
        if missing:
            raise ValueError(f"hdbpe_resolutions {sorted(missing)} are not decoder resolutions")
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, s.plane_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        zs = z.chunk(3, dim=1)
        h = torch.stack([conv(zk) for conv, zk in zip(self.post_quant_conv, zs)], dim=1)
        h = self.mid(self.conv_in(fold(h)))
        planes: list[torch.Tensor] = []
        for module in self.levels:
            h = module(h)
            if not isinstance(module, Upsample) and str(h.shape[-1]) in self.heads:
                planes.append(unfold(self.heads[str(h.shape[-1])](h)))
        planes.append(unfold(self.conv_out(F.silu(self.norm_out(h)))))
        return planes


class TriplaneVAE(ConvVAE):
    """Three planes in (``(B, 3, C, R, R)``), a tri-plane latent, tri-planes out."""

    encoder_class = TriplaneEncoder
    decoder_class = TriplaneDecoder


def triplane_spec(v, *, in_channels: int, resolution: int, cross_plane_order=None,
                  latent_order=None) -> TriplaneVAESpec:
    """The tri-plane VAE of a config's ``vae`` section ``v``, for ``in_channels`` encoder input
    channels (the PointNet's) at plane ``resolution``; ``cross_plane_order`` / ``latent_order``:
    plane names (official compatibility; none = PLANES order)."""
    return TriplaneVAESpec(
        in_channels=in_channels, resolution=resolution, ch=v.ch,
        ch_mult=tuple(v.ch_mult), num_res_blocks=v.num_res_blocks, z_channels=v.z_channels,
        embed_dim=v.embed_dim, attn_resolutions=tuple(v.attn_resolutions),
        hdbpe_resolutions=tuple(v.hdbpe_resolutions), plane_channels=v.plane_channels,
        mid_attn_heads=v.mid_attn_heads, dropout=v.dropout,
        inter_attn_resolutions=tuple(v.inter_attn_resolutions),
        cross_plane_order=plane_order(cross_plane_order), latent_order=plane_order(latent_order),
    )


def plane_order(names) -> tuple[int, ...]:
    """Plane names (e.g. ``["xy", "yz", "xz"]``) -> indices into PLANES; none -> ``(0, 1, 2)``."""
    if names is None:
        return (0, 1, 2)
    order = tuple(PLANES.index(str(n)) for n in names)
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"{list(names)} is not an order of the planes {list(PLANES)}")
    return order


# --- official checkpoints (the official ``Autoencoder3D`` state dict) -------------------------
# Official layout: ``encoder.down.{level}.{block,attn}.{j}``, ``.inter_attn.{0,1,2}`` (the cross-plane
# ResBlock / attention / ResBlock), ``.downsample``; ``encoder.mid.{block_1,attn_1,block_2}`` (per plane)
# and ``encoder.mid.{block_3,block_4}`` + ``encoder.mid_attn`` (the cross-plane middle block);
# ``decoder.up.{level}`` (level 0 = finest) with ``.block/.attn/.inter_attn/.hdbf.0/.upsample``;
# top-level ``quant_conv_{xy,yz,xz}`` / ``post_quant_conv_{xy,yz,xz}``; ResnetBlock 1x1 shortcuts are
# ``nin_shortcut``. Every size is read from the tensor shapes and the key set, except the plane
# resolution, which the state dict does not hold.

_OFFICIAL_LEAF = {"nin_shortcut": "shortcut"}


def _levels(sd: dict, pattern: str) -> list[int]:
    import re
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return sorted(found)


def official_triplane_sizes(sd: dict[str, torch.Tensor], resolution: int) -> dict:
    """The ``vae`` config section (ddmi keys) of an official ``Autoencoder3D`` state dict ``sd``
    whose encoder input planes are ``resolution`` square: ``ch``, ``ch_mult``, ``num_res_blocks``,
    ``z_channels``, ``embed_dim``, ``plane_channels`` (``out_ch``), ``attn_resolutions``,
    ``inter_attn_resolutions``, ``hdbpe_resolutions`` from the shapes and keys; also
    ``in_channels`` (the PointNet's ``c_dim``), not a ``vae`` key."""
    levels = _levels(sd, r"encoder\.down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise ValueError("not an official Autoencoder3D state dict (no encoder.down.* levels)")
    ch = sd["encoder.conv_in.weight"].shape[0]
    mult = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels]
    nrb = len(_levels(sd, r"encoder\.down\.0\.block\.(\d+)\."))
    res = [resolution // 2 ** i for i in levels]
    sizes = dict(
        ch=ch, ch_mult=mult, num_res_blocks=nrb,
        z_channels=sd["encoder.conv_out.weight"].shape[0] // 2,
        embed_dim=sd["post_quant_conv_xy.weight"].shape[1],
        plane_channels=sd["decoder.conv_out.weight"].shape[0],
        attn_resolutions=[res[i] for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd],
        inter_attn_resolutions=[res[i] for i in levels if f"encoder.down.{i}.inter_attn.0.conv1.weight" in sd],
        hdbpe_resolutions=sorted((res[i] for i in levels if f"decoder.up.{i}.hdbf.0.weight" in sd), reverse=True),
        in_channels=sd["encoder.conv_in.weight"].shape[1],
    )
    dec_attn = [res[i] for i in levels if f"decoder.up.{i}.attn.0.q.weight" in sd]
    dec_inter = [res[i] for i in levels if f"decoder.up.{i}.inter_attn.0.conv1.weight" in sd]
    if dec_attn != sizes["attn_resolutions"] or dec_inter != sizes["inter_attn_resolutions"]:
        raise ValueError("the official encoder and decoder attend at different resolutions; ddmi has one list")
    return sizes


def official_triplane_pairs(spec: TriplaneVAESpec) -> list[tuple[str, str]]:
    """``(ddmi module prefix, official module prefix)`` of every module of :class:`TriplaneVAE`
    (ddmi prefixes relative to the VAE: ``encoder.*`` / ``decoder.*``)."""
    s, pairs = spec, []
    res_of = [s.resolution // 2 ** i for i in range(len(s.ch_mult))]

    def cross(ddmi: str, official: str) -> None:
        pairs.extend((f"{ddmi}.body.{m}", f"{official}.{m}") for m in range(3))

    def mid(side: str) -> None:
        pairs.extend([(f"{side}.mid.0", f"{side}.mid.block_1"), (f"{side}.mid.1", f"{side}.mid.attn_1"),
                      (f"{side}.mid.2", f"{side}.mid.block_2"), (f"{side}.mid.3.body.0", f"{side}.mid.block_3"),
                      (f"{side}.mid.3.body.1", f"{side}.mid_attn"), (f"{side}.mid.3.body.2", f"{side}.mid.block_4")])

    pairs.append(("encoder.conv_in", "encoder.conv_in"))
    idx = 0
    for level in range(len(s.ch_mult)):
        for j in range(s.num_res_blocks):
            pairs.append((f"encoder.down.{idx}", f"encoder.down.{level}.block.{j}"))
            idx += 1
            if res_of[level] in s.attn_resolutions:
                pairs.append((f"encoder.down.{idx}", f"encoder.down.{level}.attn.{j}"))
                idx += 1
        if res_of[level] in s.inter_attn_resolutions:
            cross(f"encoder.down.{idx}", f"encoder.down.{level}.inter_attn")
            idx += 1
        if level != len(s.ch_mult) - 1:
            pairs.append((f"encoder.down.{idx}", f"encoder.down.{level}.downsample"))
            idx += 1
    mid("encoder")
    pairs += [("encoder.norm_out", "encoder.norm_out"), ("encoder.conv_out", "encoder.conv_out")]
    pairs += [(f"encoder.quant_conv.{k}", f"quant_conv_{name}") for k, name in enumerate(PLANES)]
    pairs += [(f"decoder.post_quant_conv.{k}", f"post_quant_conv_{name}") for k, name in enumerate(PLANES)]
    pairs.append(("decoder.conv_in", "decoder.conv_in"))
    mid("decoder")
    li = 0
    for level in reversed(range(len(s.ch_mult))):
        res, k = res_of[level], 0
        for j in range(s.num_res_blocks + 1):
            pairs.append((f"decoder.levels.{li}.{k}", f"decoder.up.{level}.block.{j}"))
            k += 1
            if res in s.attn_resolutions:
                pairs.append((f"decoder.levels.{li}.{k}", f"decoder.up.{level}.attn.{j}"))
                k += 1
        if res in s.inter_attn_resolutions:
            cross(f"decoder.levels.{li}.{k}", f"decoder.up.{level}.inter_attn")
        if res in s.hdbpe_resolutions:
            pairs.append((f"decoder.heads.{res}", f"decoder.up.{level}.hdbf.0"))
        li += 1
        if level != 0:
            pairs.append((f"decoder.levels.{li}", f"decoder.up.{level}.upsample"))
            li += 1
    pairs += [("decoder.norm_out", "decoder.norm_out"), ("decoder.conv_out", "decoder.conv_out")]
    return pairs


def official_triplane_state(sd: dict[str, torch.Tensor], spec: TriplaneVAESpec
                            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An official ``Autoencoder3D`` state dict as the state dict of ``TriplaneVAE(spec)``:
    ``(state, unused official keys)``. Tensors are renamed, never changed (the plane orders of the
    official code are switches of the spec, not weight permutations). Works on meta tensors."""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ddmi, official in official_triplane_pairs(spec):
        for key, value in sd.items():
            if not key.startswith(official + "."):
                continue
            rest = key[len(official) + 1:]
            head, _, leaf = rest.partition(".")
            rest = f"{_OFFICIAL_LEAF.get(head, head)}.{leaf}" if leaf else rest
            state[f"{ddmi}.{rest}"] = value
            used.add(key)
    return state, [k for k in sd if k not in used]


def official_dict_get(official: dict | None, *path, default=None):
    """``official[path[0]][path[1]]...`` or ``default`` when any level is missing.

    ``official`` is the official configuration as a plain dict, in any of its layouts: the
    ``args`` namespace (``ddconfig``, ``embed_dim``, ... at the top), the d2c-vae / ldm YAML
    (``model.params.ddconfig``, ``model.embed_dim``), merged with the ConvONet YAML (``data.padding``,
    ``model.encoder_kwargs``, ``model.TN``). A path starting with ``ddconfig``, ``mlpconfig`` or
    ``embed_dim`` is also looked up under ``model.params`` and ``model``."""
    alternatives = [path]
    if path and path[0] in ("ddconfig", "mlpconfig"):
        alternatives.append(("model", "params", *path))
    if path and path[0] == "embed_dim":
        alternatives.append(("model", *path))
    for alt in alternatives:
        node, found = official, True
        for key in alt:
            if not isinstance(node, dict) or key not in node:
                found = False
                break
            node = node[key]
        if found:
            return node
    return default


def plane_resolution(official: dict | None, cfg: DictConfig) -> int:
    """The PointNet / VAE plane resolution: from the official YAML when given, else the preset."""
    res = official_dict_get(official, "ddconfig", "resolution")
    if res is None:
        res = official_dict_get(official, "model", "encoder_kwargs", "plane_resolution")
    return int(cfg.data.resolution if res is None else res)


def mid_attn_heads(official: dict | None, cfg: DictConfig) -> int:
    attn = official_dict_get(official, "ddconfig", "attn_type")
    if attn is None:
        return int(cfg.vae.mid_attn_heads)
    if attn == "vanilla":
        return 1
    raise CheckpointError(f"official attn_type {attn!r} of a tri-plane VAE is not supported")


def official_triplane_overrides(vaemodel: dict[str, torch.Tensor], cfg: DictConfig, official: dict | None) -> dict:
    """The ``data`` / ``vae`` overrides of an official ``Autoencoder3D`` (checked against
    ``official['ddconfig']`` when given)."""
    if "quant_conv.weight" in vaemodel and "quant_conv_xy.weight" not in vaemodel:
        raise CheckpointError(
            "this official VAE is the 2-D Autoencoder that the shipped exp/stage.py builds for the NeRF LDM "
            "(official bug, docs/official-code.md §12.1.2): it cannot hold the tri-plane stage-1 weights and cannot be imported; "
            "use the stage-1 model-last.pt (Autoencoder3D), or an ldm-last.pt written by a fixed pipeline")
    res = plane_resolution(official, cfg)
    try:
        sizes = official_triplane_sizes(vaemodel, res)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not an official Autoencoder3D state dict: {e}") from e
    sizes.pop("in_channels")
    dd = official_dict_get(official, "ddconfig") or {}
    checks = {"ch": "ch", "ch_mult": "ch_mult", "num_res_blocks": "num_res_blocks",
              "z_channels": "z_channels", "plane_channels": "out_ch"}
    for ours, theirs in checks.items():
        if theirs in dd:
            want = list(dd[theirs]) if isinstance(dd[theirs], (list, tuple)) else dd[theirs]
            if want != sizes[ours]:
                raise CheckpointError(f"official ddconfig.{theirs} = {want} contradicts the weights ({sizes[ours]})")
    for ours, theirs in (("hdbpe_resolutions", "hdbf_resolutions"), ("attn_resolutions", "attn_resolutions"),
                         ("inter_attn_resolutions", "inter_attn_resolutions")):
        if theirs in dd and sorted(dd[theirs]) != sorted(sizes[ours]):
            raise CheckpointError(f"official ddconfig.{theirs} = {list(dd[theirs])} contradicts the weights "
                                  f"({sizes[ours]})")
    embed_dim = official_dict_get(official, "embed_dim")
    if embed_dim is not None and int(embed_dim) != sizes["embed_dim"]:
        raise CheckpointError(f"official embed_dim = {embed_dim} contradicts the weights ({sizes['embed_dim']})")
    sizes["mid_attn_heads"] = mid_attn_heads(official, cfg)
    sizes["dropout"] = float(dd.get("dropout", cfg.vae.dropout))
    return {"data": {"resolution": res}, "vae": sizes}


def fresh_spectral_state(spec: TriplaneVAESpec, power_iters: int) -> dict[str, torch.Tensor]:
    """The buffers of a fresh :class:`~ddmi.nn.spectral.SpectralRegularizer` of ``TriplaneVAE(spec)``
    (its power-iteration vectors: ddmi training state, which an official stage-1 checkpoint does not
    carry in ddmi's form; ``initialised`` is False, so the regulariser warms up as in a new run). The
    VAE is built on the meta device: no memory."""
    from ddmi.nn.spectral import SpectralRegularizer
    with torch.device("meta"):
        vae = TriplaneVAE(spec)
    return dict(SpectralRegularizer(vae, power_iters=power_iters).state_dict())

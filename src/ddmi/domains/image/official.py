"""Official image checkpoints (``models/d2c_vae/autoencoder_unet.Autoencoder`` + ``mlp.MLP``) read
into :class:`~ddmi.domains.image.model.ImageAutoencoder`.

Two things live here, both working on shapes only (tensors may be on the ``meta`` device):

- :func:`official_config`: the ddmi config overrides (``vae.*``, ``mlp.*``, ``data.resolution``,
  ``image.*``) inferred from the official state dicts' key set and shapes;
- :func:`official_state`: every official key renamed / reshaped onto the ddmi state dict.

Official layout (the LDM ``Encoder`` / ``Decoder`` with HDBPE heads, a StyleGAN2-style MLP):

- VAE: ``encoder.down.{level}.block.{j}`` / ``.attn.{j}`` / ``.downsample``, ``encoder.mid.block_1``
  / ``attn_1`` / ``block_2``; ``decoder.up.{level}.block.{j}`` / ``.attn.{j}`` / ``.upsample`` /
  ``.hdbf.0`` (level 0 is the finest, as in the LDM code); top-level ``quant_conv`` and
  ``post_quant_conv``; ResnetBlock shortcuts are ``nin_shortcut``.
- MLP: ``time_mlp.{1,3}`` (the Linear layers after ``SinusoidalPosEmb``), ``net_res{1..S+1}``
  (``conv{1,2,3}`` = StyledConv: ``conv.weight (1, out, in, 1, 1)``, ``conv.modulation``,
  ``noise.weight (1,)``, ``activate.bias``; ``skip.0.weight (out, in, 1, 1)`` when the width
  changes), ``torgb.conv`` and ``torgb.bias (1, 3, 1, 1)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ddmi.errors import CheckpointError
from ddmi.official.settings import official_entry

#: official ``attn_type`` -> mid-attention heads (docs/official-code.md §2.1: ``vanilla`` single head,
#: ``vanilla-multihead`` 16 heads)
ATTN_HEADS = {"vanilla": 1, "vanilla-multihead": 16}


def vae_section(sections: dict) -> tuple[str, dict]:
    """The VAE state dict of ``sections``: ``model`` in stage-1 files, ``vaemodel`` in LDM files."""
    for name in ("model", "vaemodel"):
        if name in sections and sections[name] is not None:
            return name, sections[name]
    raise CheckpointError("the official checkpoint has no 'model' or 'vaemodel' section (the image VAE)")


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _need(sd: dict, key: str, section: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"official {section} section lacks '{key}': not an image Autoencoder / MLP")
    return sd[key]


def _official_dict(official, name: str) -> dict:
    value = official_entry(official, name)
    return dict(value) if isinstance(value, Mapping) else {}


def infer_vae(vae: dict, section: str = "model") -> dict:
    """Sizes of the official ``Autoencoder`` from its key set and shapes.

    Returns ``ch, ch_mult, num_res_blocks, z_channels, embed_dim, plane_channels, in_channels`` and
    the level indices (0 = finest) that carry encoder attention (``attn_levels``), decoder
    attention (``dec_attn_levels``) and HDBPE heads (``hdbf_levels``). Resolutions are not in the
    shapes (every layer is a convolution): they follow from ``data.resolution`` as ``R / 2**level``.
    """
    keys = list(vae)
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise CheckpointError(f"official {section} section has no encoder.down.* keys")
    nrb = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    ch = _need(vae, "encoder.conv_in.weight", section).shape[0]
    ch_mult = []
    for level in levels:
        out = _need(vae, f"encoder.down.{level}.block.{nrb - 1}.conv2.weight", section).shape[0]
        if out % ch:
            raise CheckpointError(f"official {section}: level {level} width {out} is not a multiple of ch={ch}")
        ch_mult.append(out // ch)
    dec_levels = _indices(keys, r"decoder\.up\.(\d+)\.")
    dec_nrb = len(_indices(keys, r"decoder\.up\.0\.block\.(\d+)\."))
    if dec_levels != levels or dec_nrb != nrb + 1:
        raise CheckpointError(f"official {section}: decoder levels {dec_levels} x {dec_nrb} blocks do not mirror "
                              f"the encoder's {levels} x {nrb} (+1)")
    return dict(
        in_channels=vae["encoder.conv_in.weight"].shape[1], ch=ch, ch_mult=ch_mult, num_res_blocks=nrb,
        z_channels=_need(vae, "decoder.conv_in.weight", section).shape[1],
        embed_dim=_need(vae, "post_quant_conv.weight", section).shape[1],
        plane_channels=_need(vae, "decoder.conv_out.weight", section).shape[0],
        double_z=_need(vae, "encoder.conv_out.weight", section).shape[0] == 2 * vae["decoder.conv_in.weight"].shape[1],
        attn_levels=_indices(keys, r"encoder\.down\.(\d+)\.attn\."),
        dec_attn_levels=_indices(keys, r"decoder\.up\.(\d+)\.attn\."),
        hdbf_levels=_indices(keys, r"decoder\.up\.(\d+)\.hdbf\."),
    )


def infer_mlp(mlp: dict) -> dict:
    """Sizes of the official image ``MLP``: ``hidden`` (``ch``), ``scale_embed_dim`` (``ch/4``),
    ``plane_channels`` (``latent_dim``), ``si_channels`` (``in_ch``), ``out_channels``, ``num_scales``
    (the ``net_res`` blocks that read a plane; the last ``net_res`` reads none) and
    ``noise`` (whether the StyledConvs carry NoiseInjection weights)."""
    keys = list(mlp)
    blocks = _indices(keys, r"net_res(\d+)\.")
    if not blocks or blocks != list(range(1, len(blocks) + 1)):
        raise CheckpointError(f"official mlp section: net_res blocks {blocks} are not 1..n")
    hidden = _need(mlp, "time_mlp.3.weight", "mlp").shape[0]
    in1 = _need(mlp, "net_res1.conv1.conv.weight", "mlp").shape[2]
    in2 = mlp["net_res2.conv1.conv.weight"].shape[2] if len(blocks) > 2 else None
    feat = in2 - hidden if in2 is not None else in1
    return dict(
        hidden=hidden, scale_embed_dim=_need(mlp, "time_mlp.1.weight", "mlp").shape[1],
        plane_channels=None, feature_channels=feat, si_channels=None,
        out_channels=_need(mlp, "torgb.conv.weight", "mlp").shape[1], num_scales=len(blocks) - 1,
        noise="net_res1.conv1.noise.weight" in mlp,
    )


def official_config(sections: dict, cfg, official=None) -> dict:
    """ddmi overrides under which ``ImageAutoencoder`` computes the official image stage 1.

    Inferred from shapes: every width, the level count, the block count, ``embed_dim``,
    ``z_channels``, the HDBPE levels, the MLP widths. Not in the shapes, taken from ``official``
    (the official YAML: ``ddconfig``, ``mlpconfig``, ``embed_dim``) when given, else kept from
    ``cfg``: ``data.resolution`` (``ddconfig.resolution``), from which the HDBPE / attention
    resolutions follow (``R / 2**level``), and ``vae.mid_attn_heads`` (``ddconfig.attn_type``:
    ``vanilla`` 1 head, ``vanilla-multihead`` 16). The MLP's 2 scale-injection channels
    (``mlpconfig.in_ch``) are ``net_res1``'s input width minus ``latent_dim``.
    """
    name, vae = vae_section(sections)
    if sections.get("mlp") is None:
        raise CheckpointError("the official checkpoint has no 'mlp' section (the image MLP)")
    v = infer_vae(vae, name)
    m = infer_mlp(sections["mlp"])
    dd = _official_dict(official, "ddconfig")
    mc = _official_dict(official, "mlpconfig")
    if not v["double_z"]:
        raise CheckpointError(f"official {name}: double_z is False (a deterministic encoder): ddmi's VAE needs "
                              "the mean and log-variance")
    if v["in_channels"] != 3:
        raise CheckpointError(f"official {name}: {v['in_channels']} input channels (ddmi images have 3)")
    si_channels = m["feature_channels"] - v["plane_channels"]
    if si_channels != 2 or m["out_channels"] != 3:
        raise CheckpointError(f"official mlp: in_ch={si_channels}, out_ch={m['out_channels']}; ddmi's image MLP "
                              "reads latent_dim + 2 scale channels and writes RGB")
    if m["num_scales"] != len(v["hdbf_levels"]) + 1:
        raise CheckpointError(f"official mlp reads {m['num_scales']} planes but the decoder writes "
                              f"{len(v['hdbf_levels']) + 1}")
    resolution = int(dd.get("resolution", cfg.data.resolution))
    hdbpe = sorted((resolution // 2 ** level for level in v["hdbf_levels"]), reverse=True)   # the YAML order
    if "hdbf_resolutions" in dd and sorted((int(r) for r in dd["hdbf_resolutions"]), reverse=True) != hdbpe:
        raise CheckpointError(f"official ddconfig.hdbf_resolutions {list(dd['hdbf_resolutions'])} contradict the "
                              f"decoder's HDBPE heads at {hdbpe} (resolution {resolution})")
    attn = sorted({resolution // 2 ** level for level in v["attn_levels"] + v["dec_attn_levels"]})
    if v["attn_levels"] != v["dec_attn_levels"]:
        raise CheckpointError(f"official {name}: encoder attention levels {v['attn_levels']} differ from the "
                              f"decoder's {v['dec_attn_levels']}")
    attn_type = dd.get("attn_type")
    if attn_type is not None and attn_type not in ATTN_HEADS:
        raise CheckpointError(f"official ddconfig.attn_type '{attn_type}' is not an image attention type "
                              f"({', '.join(ATTN_HEADS)})")
    heads = ATTN_HEADS[attn_type] if attn_type is not None else cfg.vae.mid_attn_heads
    if attn and heads != 1:
        raise CheckpointError(f"official attention at resolutions {attn} with {heads} heads: ddmi's per-level "
                              "attention (vae.attn_resolutions) has one head")
    checks = {"ch": v["ch"], "num_res_blocks": v["num_res_blocks"], "z_channels": v["z_channels"],
              "out_ch": v["plane_channels"], "ch_mult": v["ch_mult"]}
    for key, value in checks.items():
        if key in dd and (list(dd[key]) if key == "ch_mult" else dd[key]) != value:
            raise CheckpointError(f"official ddconfig.{key}={dd[key]} contradicts the weights ({value})")
    for key, value in {"ch": m["hidden"], "latent_dim": v["plane_channels"], "in_ch": si_channels}.items():
        if key in mc and mc[key] != value:
            raise CheckpointError(f"official mlpconfig.{key}={mc[key]} contradicts the weights ({value})")
    embed_dim = official_entry(official, "embed_dim")
    if embed_dim is not None and embed_dim != v["embed_dim"]:
        raise CheckpointError(f"official embed_dim={embed_dim} contradicts the weights ({v['embed_dim']})")
    return {
        "data": {"resolution": resolution},
        "vae": {"ch": v["ch"], "ch_mult": v["ch_mult"], "num_res_blocks": v["num_res_blocks"],
                "z_channels": v["z_channels"], "embed_dim": v["embed_dim"], "attn_resolutions": attn,
                "hdbpe_resolutions": hdbpe, "plane_channels": v["plane_channels"], "mid_attn_heads": heads},
        "mlp": {"hidden": m["hidden"], "scale_embed_dim": m["scale_embed_dim"]},
        "image": {"noise_injection": m["noise"]},
    }


# ------------------------------------------------------------------------------------------
# key mapping


def _conv_vae_names(spec) -> dict[str, str]:
    """Official VAE module prefix -> ddmi module prefix (under ``vae.``), walking the levels as both
    constructors do."""
    names: dict[str, str] = {"quant_conv": "encoder.quant_conv", "post_quant_conv": "decoder.post_quant_conv"}
    for part in ("conv_in", "norm_out", "conv_out"):
        names[f"encoder.{part}"] = f"encoder.{part}"
        names[f"decoder.{part}"] = f"decoder.{part}"
    for net in ("encoder", "decoder"):
        names[f"{net}.mid.block_1"] = f"{net}.mid.0"
        names[f"{net}.mid.attn_1"] = f"{net}.mid.1"
        names[f"{net}.mid.block_2"] = f"{net}.mid.2"
    n_levels = len(spec.ch_mult)
    i, res = 0, spec.resolution
    for level in range(n_levels):
        for j in range(spec.num_res_blocks):
            names[f"encoder.down.{level}.block.{j}"] = f"encoder.down.{i}"
            i += 1
            if res in spec.attn_resolutions:
                names[f"encoder.down.{level}.attn.{j}"] = f"encoder.down.{i}"
                i += 1
        if level != n_levels - 1:
            names[f"encoder.down.{level}.downsample"] = f"encoder.down.{i}"
            i += 1
            res //= 2
    li, res = 0, spec.latent_resolution
    for level in reversed(range(n_levels)):
        k = 0
        for j in range(spec.num_res_blocks + 1):
            names[f"decoder.up.{level}.block.{j}"] = f"decoder.levels.{li}.{k}"
            k += 1
            if res in spec.attn_resolutions:
                names[f"decoder.up.{level}.attn.{j}"] = f"decoder.levels.{li}.{k}"
                k += 1
        if res in spec.hdbpe_resolutions:
            names[f"decoder.up.{level}.hdbf.0"] = f"decoder.heads.{res}"
        li += 1
        if level != 0:
            names[f"decoder.up.{level}.upsample"] = f"decoder.levels.{li}"
            li += 1
            res *= 2
    return names


def _rename_leaf(leaf: str) -> str:
    return "shortcut" + leaf[len("nin_shortcut"):] if leaf.startswith("nin_shortcut") else leaf


def vae_state(vae: dict, spec, section: str = "model") -> tuple[dict, list[str]]:
    """Official ``Autoencoder`` state dict -> ``{ddmi key under "vae.": tensor}``, unused keys."""
    names = _conv_vae_names(spec)
    by_length = sorted(names, key=len, reverse=True)
    state, unused = {}, []
    for key, value in vae.items():
        prefix = next((p for p in by_length if key.startswith(p + ".")), None)
        if prefix is None:
            unused.append(f"{section}.{key}")
            continue
        state[f"vae.{names[prefix]}.{_rename_leaf(key[len(prefix) + 1:])}"] = value
    return state, unused


def _styled_conv(mlp: dict, src: str, dst: str, state: dict, used: set, noise: bool) -> None:
    """One official StyledConv (modulated 1x1 conv + noise + FusedLeakyReLU) -> a ddmi StyledLayer."""
    w = mlp[f"{src}.conv.weight"]
    state[f"{dst}.linear.weight"] = w.reshape(w.shape[1], w.shape[2])
    state[f"{dst}.linear.modulation.weight"] = mlp[f"{src}.conv.modulation.weight"]
    state[f"{dst}.linear.modulation.bias"] = mlp[f"{src}.conv.modulation.bias"]
    state[f"{dst}.bias"] = mlp[f"{src}.activate.bias"]
    used.update(f"{src}.{k}" for k in ("conv.weight", "conv.modulation.weight", "conv.modulation.bias",
                                       "activate.bias"))
    if noise and f"{src}.noise.weight" in mlp:
        state[f"{dst}.noise_weight"] = mlp[f"{src}.noise.weight"]
        used.add(f"{src}.noise.weight")


def mlp_state(mlp: dict, *, num_scales: int, noise: bool) -> tuple[dict, list[str]]:
    """Official image ``MLP`` state dict -> ``{ddmi key under "mlp.": tensor}``, unused keys.

    ``noise``: whether ddmi's MLP has NoiseInjection weights (``image.noise_injection``); without
    them the official ``noise.weight`` keys are returned as unused."""
    state, used = {}, set()
    for i, layer in ((1, 0), (3, 2)):
        for leaf in ("weight", "bias"):
            if f"time_mlp.{i}.{leaf}" in mlp:
                state[f"style.{layer}.{leaf}"] = mlp[f"time_mlp.{i}.{leaf}"]
                used.add(f"time_mlp.{i}.{leaf}")
    for b in range(1, num_scales + 2):
        dst = f"blocks.{b - 1}" if b <= num_scales else "final"
        for c in range(1, 4):
            if f"net_res{b}.conv{c}.conv.weight" in mlp:
                _styled_conv(mlp, f"net_res{b}.conv{c}", f"{dst}.layers.{c - 1}", state, used, noise)
        if f"net_res{b}.skip.0.weight" in mlp:
            w = mlp[f"net_res{b}.skip.0.weight"]
            state[f"{dst}.skip.weight"] = w.reshape(w.shape[0], w.shape[1])
            used.add(f"net_res{b}.skip.0.weight")
    if "torgb.conv.weight" in mlp:
        w = mlp["torgb.conv.weight"]
        state["to_rgb.weight"] = w.reshape(w.shape[1], w.shape[2])
        state["to_rgb.modulation.weight"] = mlp["torgb.conv.modulation.weight"]
        state["to_rgb.modulation.bias"] = mlp["torgb.conv.modulation.bias"]
        used.update(("torgb.conv.weight", "torgb.conv.modulation.weight", "torgb.conv.modulation.bias"))
    if "torgb.bias" in mlp:
        state["rgb_bias"] = mlp["torgb.bias"].reshape(-1)
        used.add("torgb.bias")
    return state, [f"mlp.{k}" for k in mlp if k not in used]


def official_state(sections: dict, spec, *, num_scales: int, noise: bool) -> tuple[dict, list[str]]:
    """Both official sections as the ``ImageAutoencoder`` state dict: ``(state, unused keys)``."""
    name, vae = vae_section(sections)
    state, unused = vae_state(vae, spec, name)
    mstate, munused = mlp_state(sections.get("mlp") or {}, num_scales=num_scales, noise=noise)
    state.update({f"mlp.{k}": v for k, v in mstate.items()})
    return state, unused + munused

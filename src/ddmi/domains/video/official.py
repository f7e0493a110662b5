"""Official video checkpoints (``VITAutoencoder`` + ``VideoDecoder_light`` + ``MLPVideo``) in ddmi.

:func:`official_config` turns the official stage-1 sections (``vaemodel``, ``mlp``) into config
overrides of ddmi's video model (sizes from the tensor shapes, the official-compatibility switches
of :class:`~ddmi.domains.video.config.VideoConfig` on); :func:`official_state` renames the tensors
onto that model's state dict. Both work on meta tensors (shape-only manifests).

Plane names. The official encoder's ``yt`` collapses h, so it spans (t, x): that is ddmi's ``xt``
(rows t, cols x); the official ``xt`` collapses w and spans (t, y): ddmi's ``yt``. The official
latent is ``[xy, xt, yt]`` in its names = ``[xy, yt, xt]`` in ddmi's (``video.latent_order``).

Sizes read from the shapes: TimeSformer width (patch embedding), patch (its input ``3 p^2``), depth,
head width (the rotary buffer ``inv_freqs`` has ``dim_head / 2`` entries) and so the head count,
GEGLU factor; frames and latent side (the collapsers' positional embeddings), hence the resolution
``latent side x patch``; collapser depth, MLP width and inner width; ``embed_dim``,
``z_channels``, ``ch`` / ``ch_mult`` / ``num_res_blocks``, the HDBPE and inter-attention levels,
``out_ch``; the cross-plane attention heads (``-expand``: q maps C -> heads x C); the MLP width.

Not in the shapes:

* the collapsers' head count: hard-wired to 4 in the official ``VITAutoencoder`` (docs/official-code.md §3.4:
  4 heads x 48 at width 384) -- :data:`OFFICIAL_COLLAPSE_HEADS`;
* the decoder's mid attention heads: ``ddconfig.attn_type`` of ``official`` (``vanilla`` = 1 head,
  ``vanilla-multihead`` = 16, docs/official-code.md §2.1), else the preset's ``vae.mid_attn_heads``;
* without ``-expand`` (q maps C -> C) the cross-plane head count: the preset's ``video.cross_heads``.
"""

from __future__ import annotations

import math
import re

import torch
from omegaconf import DictConfig

from ddmi.errors import CheckpointError

#: official plane name -> index in ddmi's plane order PLANES = (xy, xt, yt)
OFFICIAL_PLANE_INDEX = {"xy": 0, "yt": 1, "xt": 2}
#: the official latent token order [xy, xt, yt] written in ddmi's plane names
OFFICIAL_LATENT_ORDER = "xy,yt,xt"
OFFICIAL_COLLAPSE_HEADS = 4
OFFICIAL_MID_HEADS = {"vanilla": 1, "vanilla-multihead": 16}

_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "shortcut"}


def _sections(sections: dict) -> tuple[dict, dict]:
    try:
        return sections["vaemodel"], sections["mlp"]
    except KeyError as exc:
        raise CheckpointError(f"an official video stage-1 checkpoint has sections 'vaemodel' and 'mlp'; "
                              f"missing {exc.args[0]!r}") from None


def _indices(state: dict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) in the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.fullmatch(k)] if m})


def official_get(official: dict | None, section: str, key: str, default=None):
    """``official[section][key]`` (``section`` ``""``: a top-level key), looked up at the top of the
    official dict and under its ``model``, ``data`` and ``data_config`` entries (the YAML's and
    ``main.py``'s nestings); ``default`` when absent."""
    if not official:
        return default
    scopes = [official] + [official[k] for k in ("model", "data", "data_config") if isinstance(official.get(k), dict)]
    for scope in scopes:
        sec = scope if section == "" else scope.get(section)
        if isinstance(sec, dict) and key in sec:
            return sec[key]
    return default


def official_sizes(vaemodel: dict, mlp: dict) -> dict:
    """Every architecture size that the shapes of the official sections determine (module docstring)."""
    pe = vaemodel["encoder.to_patch_embedding.weight"].shape          # (dim, 3 p^2)
    dim = pe[0]
    patch = math.isqrt(pe[1] // 3)
    if 3 * patch * patch != pe[1]:
        raise CheckpointError(f"the patch embedding reads {pe[1]} values, not 3 x p^2")
    depth = len(_indices(vaemodel, r"encoder\.layers\.(\d+)\.0\.fn\.to_qkv\.weight"))
    head_dim = 2 * vaemodel["encoder.frame_rot_emb.inv_freqs"].shape[0]
    inner = vaemodel["encoder.layers.0.0.fn.to_out.0.weight"].shape[1]
    frames = vaemodel["xy_pos_embedding"].shape[1] - 1
    side = vaemodel["yt_pos_embedding"].shape[1] - 1
    c_inner = vaemodel["xy_quant_attn.layers.0.0.fn.to_out.0.weight"].shape[1]
    levels = _indices(vaemodel, r"decoder\.up\.(\d+)\.block\.0\.conv1\.weight")
    outs = [vaemodel[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in levels]
    ch = outs[0]
    if any(o % ch for o in outs):
        raise CheckpointError(f"decoder level widths {outs} are not multiples of the finest ({ch})")
    resolution = side * patch
    res = {i: resolution // 2 ** i for i in levels}
    mid_c = vaemodel["decoder.mid_attn.q.weight"].shape
    return dict(
        enc_dim=dim, patch=patch, enc_depth=depth, enc_head_dim=head_dim, enc_heads=inner // head_dim,
        enc_ff_mult=vaemodel["encoder.layers.0.2.fn.net.0.weight"].shape[0] // (2 * dim),
        frames=frames, side=side, resolution=resolution,
        collapse_depth=len(_indices(vaemodel, r"xy_quant_attn\.layers\.(\d+)\.0\.fn\.to_qkv\.weight")),
        collapse_inner=c_inner, collapse_mlp=vaemodel["xy_quant_attn.layers.0.1.fn.net.0.weight"].shape[0],
        moments=vaemodel["pre_xy.weight"].shape[0],
        embed_dim=vaemodel["post_xy.weight"].shape[1], z_channels=vaemodel["post_xy.weight"].shape[0],
        ch=ch, ch_mult=[o // ch for o in outs],
        num_res_blocks=len(_indices(vaemodel, r"decoder\.up\.0\.block\.(\d+)\.conv1\.weight")) - 1,
        hdbpe_resolutions=sorted((res[i] for i in levels if f"decoder.up.{i}.hdbf.0.weight" in vaemodel),
                                 reverse=True),
        inter_attn_resolutions=sorted(res[i] for i in levels if f"decoder.up.{i}.inter_attn.0.q.weight" in vaemodel),
        plane_channels=vaemodel["decoder.conv_out.weight"].shape[0],
        cross_ratio=(mid_c[0] // mid_c[1], mid_c[0] % mid_c[1]),
        mlp_hidden=mlp["net_res1.fc_1.weight"].shape[0], mlp_in=mlp["net_res1.fc_0.weight"].shape[1],
        mlp_blocks=len(_indices(mlp, r"net_res(\d+)\.fc_0\.weight")),
    )


def _check(name: str, inferred, official: dict | None, section: str, key: str) -> None:
    """A value of ``official`` (if there) must be the one the shapes give (resolution lists: as sets)."""
    value = official_get(official, section, key)
    if isinstance(value, (list, tuple)):
        value = sorted(value) if key.endswith("resolutions") else list(value)
        inferred = sorted(inferred) if key.endswith("resolutions") else inferred
    if value is not None and value != inferred:
        raise CheckpointError(f"official {section}.{key} = {value} but the checkpoint's shapes give {inferred}")


def official_config(sections: dict[str, dict[str, torch.Tensor]], cfg: DictConfig,
                    official: dict | None = None) -> dict:
    """Overrides (nested dict) under which ddmi's video model computes the official function."""
    vaemodel, mlp = _sections(sections)
    s = official_sizes(vaemodel, mlp)
    if 2 ** (len(s["ch_mult"]) - 1) != s["patch"]:
        raise CheckpointError(f"the TimeSformer patch ({s['patch']}) is not the decoder's upsampling factor "
                              f"2^{len(s['ch_mult']) - 1}: ddmi ties the two")
    if s["moments"] != 2 * s["embed_dim"]:
        raise CheckpointError(f"pre_xy writes {s['moments']} channels, expected 2 x embed_dim = {2 * s['embed_dim']}")
    if s["collapse_inner"] % OFFICIAL_COLLAPSE_HEADS:
        raise CheckpointError(f"collapser width {s['collapse_inner']} is not {OFFICIAL_COLLAPSE_HEADS} heads")
    if s["mlp_in"] != 3 * s["plane_channels"] or s["mlp_blocks"] != len(s["hdbpe_resolutions"]) + 2:
        raise CheckpointError(f"MLPVideo ({s['mlp_blocks']} blocks reading {s['mlp_in']} channels) does not fit "
                              f"{len(s['hdbpe_resolutions']) + 1} scales of 3 x {s['plane_channels']} channels")
    for name, key in (("timesformer_channels", "enc_dim"), ("patch_size", "patch"), ("resolution", "resolution"),
                      ("ch", "ch"), ("ch_mult", "ch_mult"), ("num_res_blocks", "num_res_blocks"),
                      ("z_channels", "z_channels"), ("out_ch", "plane_channels"),
                      ("hdbf_resolutions", "hdbpe_resolutions")):
        _check(name, s[key], official, "ddconfig", name)
    _check("embed_dim", s["embed_dim"], official, "", "embed_dim")
    _check("frames", s["frames"], official, "", "frames")
    _check("ch", s["mlp_hidden"], official, "mlpconfig", "ch")
    attn_type = official_get(official, "ddconfig", "attn_type")
    if attn_type is not None and attn_type not in OFFICIAL_MID_HEADS:
        raise CheckpointError(f"official ddconfig.attn_type {attn_type!r} is not one of {sorted(OFFICIAL_MID_HEADS)}")
    mid_heads = OFFICIAL_MID_HEADS[attn_type] if attn_type else cfg.vae.mid_attn_heads
    ratio, rest = s["cross_ratio"]
    expand = ratio > 1 and rest == 0
    return {
        "data": {"resolution": s["resolution"]},
        "vae": dict(ch=s["ch"], ch_mult=s["ch_mult"], num_res_blocks=s["num_res_blocks"], z_channels=s["z_channels"],
                    embed_dim=s["embed_dim"], hdbpe_resolutions=s["hdbpe_resolutions"],
                    inter_attn_resolutions=s["inter_attn_resolutions"], plane_channels=s["plane_channels"],
                    mid_attn_heads=mid_heads),
        "video": dict(frames=s["frames"], enc_dim=s["enc_dim"], enc_depth=s["enc_depth"], enc_heads=s["enc_heads"],
                      enc_head_dim=s["enc_head_dim"], enc_ff_mult=s["enc_ff_mult"],
                      collapse_depth=s["collapse_depth"], collapse_heads=OFFICIAL_COLLAPSE_HEADS,
                      collapse_head_dim=s["collapse_inner"] // OFFICIAL_COLLAPSE_HEADS,
                      collapse_mlp=s["collapse_mlp"], cross_heads=ratio if expand else cfg.video.cross_heads,
                      cross_expand=expand,
                      official_rotary=True, collapse_readout="first", collapse_norm=False,
                      latent_order=OFFICIAL_LATENT_ORDER, official_query=True),
        "mlp": {"hidden": s["mlp_hidden"]},
    }


def _is_meta(t: torch.Tensor) -> bool:
    return t.device.type == "meta"


def _rotary_buffers_ok(vaemodel: dict, head_dim: int) -> bool:
    """The official rotary buffers hold the values ddmi recomputes (``official_rotary``)."""
    inv, scales = vaemodel["encoder.frame_rot_emb.inv_freqs"], vaemodel["encoder.image_rot_emb.scales"]
    if _is_meta(inv) or _is_meta(scales):
        return inv.shape == (head_dim // 2,) and scales.shape == (head_dim // 4,)
    want_inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    want_scales = torch.logspace(0.0, math.log(5.0) / math.log(2), head_dim // 4, base=2)
    same = [a.shape == b.shape and torch.allclose(a.float().cpu(), b, rtol=1e-6, atol=0)
            for a, b in ((inv, want_inv), (scales, want_scales))]
    return all(same)


def _squeeze1d(t: torch.Tensor) -> torch.Tensor:
    """Conv1d weight ``(out, in, 1)`` -> Linear weight ``(out, in)``; biases unchanged."""
    return t[..., 0] if t.dim() == 3 else t


def official_key(key: str, levels: int, resolution: int, mlp_blocks: int, section: str) -> tuple[str, bool] | None:
    """The ddmi key of one official key (``None`` if it has no place), and whether the tensor is a
    Conv1d weight to squeeze to a Linear weight."""
    if section == "mlp":
        m = re.fullmatch(r"net_res(\d+)\.(.+)", key)
        if m:
            k = int(m.group(1))
            target = f"blocks.{k - 1}" if k < mlp_blocks else "final"
            return f"mlp.{target}.{m.group(2)}", False
        m = re.fullmatch(r"net_out\.(weight|bias)", key)
        return (f"mlp.to_rgb.{m.group(1)}", False) if m else None
    enc, dec = "vae.encoder", "vae.decoder"
    m = re.fullmatch(r"encoder\.to_patch_embedding\.(weight|bias)", key)
    if m:
        return f"{enc}.timesformer.to_tokens.{m.group(1)}", False
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.([012])\.(.+)", key)
    if m:
        i, j, rest = m.groups()
        part = {"0": "t", "1": "s", "2": "f"}[j]
        if rest.startswith("norm."):
            return f"{enc}.timesformer.blocks.{i}.norm_{part}.{rest[5:]}", False
        sub = {"fn.to_qkv.weight": "to_qkv.weight", "fn.to_out.0.weight": "to_out.weight",
               "fn.to_out.0.bias": "to_out.bias"} if part != "f" else \
              {"fn.net.0.weight": "proj_in.weight", "fn.net.0.bias": "proj_in.bias",
               "fn.net.3.weight": "proj_out.weight", "fn.net.3.bias": "proj_out.bias"}
        if rest not in sub:
            return None
        return f"{enc}.timesformer.blocks.{i}.{'ff' if part == 'f' else 'attn_' + part}.{sub[rest]}", False
    m = re.fullmatch(r"(xy|xt|yt)_(token|pos_embedding)", key)
    if m:
        return f"{enc}.collapse.{OFFICIAL_PLANE_INDEX[m.group(1)]}.{'token' if m.group(2) == 'token' else 'pos'}", False
    m = re.fullmatch(r"(xy|xt|yt)_quant_attn\.layers\.(\d+)\.([01])\.(.+)", key)
    if m:
        p, layer, j, rest = m.groups()
        base = f"{enc}.collapse.{OFFICIAL_PLANE_INDEX[p]}.layers.{layer}"
        sub = ({"norm.weight": "0.weight", "norm.bias": "0.bias", "fn.to_qkv.weight": "1.to_qkv.weight",
                "fn.to_out.0.weight": "1.to_out.weight", "fn.to_out.0.bias": "1.to_out.bias"} if j == "0" else
               {"norm.weight": "2.weight", "norm.bias": "2.bias", "fn.net.0.weight": "3.0.weight",
                "fn.net.0.bias": "3.0.bias", "fn.net.3.weight": "3.2.weight", "fn.net.3.bias": "3.2.bias"})
        return (f"{base}.{sub[rest]}", False) if rest in sub else None
    m = re.fullmatch(r"(pre|post)_(xy|xt|yt)\.(weight|bias)", key)
    if m:
        where = f"{enc}.quant_conv" if m.group(1) == "pre" else f"{dec}.post_quant_conv"
        return f"{where}.{OFFICIAL_PLANE_INDEX[m.group(2)]}.{m.group(3)}", False
    m = re.fullmatch(r"decoder\.(conv_in|norm_out|conv_out)\.(weight|bias)", key)
    if m:
        return f"{dec}.{m.group(1)}.{m.group(2)}", False
    m = re.fullmatch(r"decoder\.mid\.(block_1|attn_1|block_2)\.(\w+)\.(weight|bias)", key)
    if m:
        idx = {"block_1": 0, "attn_1": 1, "block_2": 2}[m.group(1)]
        name = m.group(2) if m.group(1) == "attn_1" else _RES.get(m.group(2))
        return (f"{dec}.mid.{idx}.{name}.{m.group(3)}", False) if name else None
    m = re.fullmatch(r"decoder\.mid_attn\.(norm|q|k|v|proj_out)\.(weight|bias)", key)
    if m:
        return f"{dec}.mid_cross.{m.group(1)}.{m.group(2)}", m.group(1) != "norm"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.(.+)", key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        j, res = levels - 1 - i, resolution // 2 ** i
        b = re.fullmatch(r"block\.(\d+)\.(\w+)\.(weight|bias)", rest)
        if b and b.group(2) in _RES:
            return f"{dec}.levels.{j}.{b.group(1)}.{_RES[b.group(2)]}.{b.group(3)}", False
        a = re.fullmatch(r"inter_attn\.0\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)
        if a:
            return f"{dec}.cross.{res}.{a.group(1)}.{a.group(2)}", a.group(1) != "norm"
        h = re.fullmatch(r"hdbf\.0\.(weight|bias)", rest)
        if h:
            return f"{dec}.heads.{res}.{h.group(1)}", False
        u = re.fullmatch(r"upsample\.conv\.(weight|bias)", rest)
        if u and i > 0:
            return f"{dec}.upsample.{j}.conv.{u.group(1)}", False
    return None


def official_state(sections: dict[str, dict[str, torch.Tensor]],
                   cfg: DictConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official sections as the state dict of ``VideoAutoencoder(cfg)`` (``cfg`` with
    :func:`official_config`'s overrides): ``(state, unused)``; ``unused`` lists ``section.key`` of
    every official tensor with no place in ddmi. The spectral regulariser's buffers (ddmi training
    state, absent from official files) are those of a fresh regulariser. Works on meta tensors."""
    vaemodel, mlp = _sections(sections)
    s = official_sizes(vaemodel, mlp)
    levels = len(s["ch_mult"])
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for section, tensors in (("vaemodel", vaemodel), ("mlp", mlp)):
        for key, value in tensors.items():
            if key in ("encoder.frame_rot_emb.inv_freqs", "encoder.image_rot_emb.scales"):
                if not _rotary_buffers_ok(vaemodel, s["enc_head_dim"]):
                    unused.append(f"{section}.{key}")      # values ddmi does not recompute
                continue
            hit = official_key(key, levels, s["resolution"], s["mlp_blocks"], section)
            if hit is None or hit[0] in state:
                unused.append(f"{section}.{key}")
                continue
            state[hit[0]] = _squeeze1d(value) if hit[1] and key.endswith("weight") else value
    if cfg.loss.sn_reg:
        state.update({f"spectral.{k}": v for k, v in fresh_spectral_state(cfg).items()})
    return state, unused


def fresh_spectral_state(cfg: DictConfig) -> dict[str, torch.Tensor]:
    """The buffers of a fresh :class:`~ddmi.nn.spectral.SpectralRegularizer` of the video VAE of
    ``cfg`` (power-iteration vectors: ddmi training state; ``initialised`` is False, so it warms
    up as in a new run). The VAE is built on the meta device: no memory."""
    from ddmi.domains.video.model import video_spec
    from ddmi.nn.spectral import SpectralRegularizer
    from ddmi.vae.spacetime import VideoVAE
    with torch.device("meta"):
        vae = VideoVAE(video_spec(cfg))
    return dict(SpectralRegularizer(vae, power_iters=cfg.loss.sn_power_iters).state_dict())

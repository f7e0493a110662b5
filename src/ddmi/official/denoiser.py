"""The official stage-2 model (``diffusion.ddpm.DDPM`` around an ADM ``UNetModel`` or the video
``UNetModel_Triplane``, and its ``ema_pytorch.EMA`` 0.2.1 wrapper) as ddmi's
:class:`~ddmi.diffusion.LatentDiffusion` (fixtures README sections 2.2 and 4.6).

Official DDPM state dict (``ldm-*.pt`` -> ``diffusion``; the same keys under ``ema.online_model.*``
and ``ema.ema_model.*``):

* ``mixing_logit`` (1, C, 1, 1), or (1, C, 1) for video -> ddmi ``mixing_logit`` (C,);
* the 12 schedule buffers, each (T,): checked against ddmi's schedule (ddmi keeps no copy);
* ``model.*``: the UNet -> ddmi ``net.*``:

  - ResBlock ``skip_connection`` -> ``skip``;
  - attention ``qkv`` / ``proj_out`` are Conv1d ``(O, I, 1)`` -> ddmi Conv2d ``(O, I, 1, 1)``; the
    legacy QKV layout orders the 3C qkv channels as ``(heads, 3, head_dim)``, ddmi's attention as
    ``(3, heads, head_dim)``: the rows are permuted (heads = C / num_head_channels);
  - tri-plane 1-D attention ``input_attns.i`` / ``mid_attn`` / ``output_attns.i`` -> ddmi
    ``input_cross.i`` / ``middle_cross`` / ``output_cross.i``; ``q``/``k``/``v``/``proj_out`` are
    Conv1d ``(C, C, 1)`` -> Linear ``(C, C)``. The official model has no 1-D attention after its
    input conv (``input_attns`` starts at 1); ddmi's ``input_cross.0`` is filled with an exact
    identity (zero output projection), so that no switch is needed.

ddmi's ``latent_scale`` (ones) and ``latent_shift`` (zeros) are filled in: the official LDM works on
raw VAE latents.

The ``ema`` section (ema-pytorch 0.2.1: ``initted``, ``step``, ``online_model.*``, ``ema_model.*``)
becomes ddmi's :class:`~ddmi.training.ema.EMA` state (``ema_model.*``, ``step``); ``ema_model`` holds
the weights official sampling uses (:func:`official_ema_state`).

What shapes cannot tell: the attention head width (``num_head_channels``; from the official YAML
``unetconfig`` when given, else ``cfg.ldm.unet.num_head_channels``); the tri-plane sizes
``size1, size2, size3`` (the video latent's planes: from ``cfg``, checked against ``unetconfig``
when given); the 1-D attention's 16 heads (fixed in the official code). Every function here works
on shape-only tensors (``device="meta"``); the schedule values are then not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ddmi.diffusion import alphas_cumprod as _alphas_cumprod
from ddmi.diffusion import linear_sqrt_betas
from ddmi.errors import CheckpointError
from ddmi.official.settings import official_entry

__all__ = [
    "SCHEDULE_BUFFERS",
    "OFFICIAL_TRIPLANE_HEADS",
    "infer_unet",
    "official_ldm_config",
    "ddpm_state",
    "triplane_ddpm_state",
    "split_ema",
    "official_ema_state",
    "check_schedule",
]

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
#: heads of the official tri-plane UNet's 1-D token attention (``vanilla-1d-multihead``, hard-wired)
OFFICIAL_TRIPLANE_HEADS = 16
#: ddmi's schedule (``LatentDiffusion`` defaults): T, beta_start, beta_end of the sqrt-linear betas
DDMI_SCHEDULE = (1000, 0.0015, 0.0195)

_TRIPLANE_PREFIXES = ("input_attns.", "mid_attn.", "output_attns.")


# ----------------------------------------------------------------------------------------------
# Sizes


def _unet_keys(diffusion: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries without the prefix."""
    return {k[len("model."):]: v for k, v in diffusion.items() if k.startswith("model.")}


def _blocks(unet: Mapping[str, torch.Tensor], name: str) -> list[set[str]]:
    """The key suffixes of ``name.<i>.*`` for i = 0, 1, ... (consecutive)."""
    found: dict[int, set[str]] = {}
    for k in unet:
        m = re.match(rf"{name}\.(\d+)\.(.+)$", k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    if sorted(found) != list(range(len(found))):
        raise CheckpointError(f"official UNet: {name} indices {sorted(found)} are not consecutive")
    return [found[i] for i in range(len(found))]


def infer_unet(diffusion: Mapping[str, torch.Tensor]) -> dict:
    """The ADM UNet sizes of an official DDPM state dict, from tensor shapes and the key set.

    Returns ``in_channels, out_channels, model_channels, channel_mult, num_res_blocks,
    attention_resolutions`` (downsample factors with attention; sorted descending), ``triplane``
    (whether the tri-plane 1-D attention exists) and ``stem_cross`` (whether the tri-plane UNet
    attends after its input conv).
    """
    unet = _unet_keys(diffusion)
    if "input_blocks.0.0.weight" not in unet or "out.2.weight" not in unet:
        raise CheckpointError("the official diffusion state dict has no ADM UNet under model.*")
    stem = unet["input_blocks.0.0.weight"]
    mc, in_ch = int(stem.shape[0]), int(stem.shape[1])
    out_ch = int(unet["out.2.weight"].shape[0])
    levels: list[list[tuple[int, bool]]] = [[]]   # per level: (width, attention) of each ResBlock
    for i, keys in enumerate(_blocks(unet, "input_blocks")[1:], start=1):
        if "0.op.weight" in keys:
            levels.append([])
        elif "0.in_layers.2.weight" in keys:
            width = int(unet[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0])
            levels[-1].append((width, "1.qkv.weight" in keys))
        else:
            raise CheckpointError(f"official UNet: input_blocks.{i} is neither a ResBlock nor a Downsample")
    nrb = {len(level) for level in levels}
    if len(nrb) != 1 or 0 in nrb:
        raise CheckpointError(f"official UNet: ResBlocks per level {[len(x) for x in levels]} differ "
                              "(ddmi's UNet has the same number at every level)")
    mult = []
    for level in levels:
        widths = {w for w, _ in level}
        if len(widths) != 1 or next(iter(widths)) % mc:
            raise CheckpointError(f"official UNet: level widths {sorted(widths)} are not one multiple of {mc}")
        mult.append(next(iter(widths)) // mc)
    attn = []
    for level, blocks in enumerate(levels):
        flags = {a for _, a in blocks}
        if len(flags) != 1:
            raise CheckpointError(f"official UNet: attention on only some ResBlocks of level {level}")
        if flags.pop():
            attn.append(2 ** level)
    triplane = any(k.startswith(_TRIPLANE_PREFIXES) for k in unet)
    stem_cross = any(k.startswith("input_attns.0.") for k in unet)
    return dict(in_channels=in_ch, out_channels=out_ch, model_channels=mc, channel_mult=mult,
                num_res_blocks=nrb.pop(), attention_resolutions=sorted(attn, reverse=True),
                triplane=triplane, stem_cross=stem_cross)


#: official ``unetconfig`` options ddmi's UNet does not implement, and the value of the official configs
_UNSUPPORTED_UNET = {"use_scale_shift_norm": False, "resblock_updown": False, "use_spatial_transformer": False,
                     "dims": 2, "num_classes": None}
#: official ``ddpmconfig`` options that would make the official sampler or loss another function
_UNSUPPORTED_DDPM = {"clip_denoised": False, "parameterization": "eps", "v_posterior": 0.0,
                     "beta_schedule": "linear"}


def _check_official_options(official: Mapping | None) -> None:
    """Refuse official settings whose function ddmi does not compute (none of the released configs
    sets them): scale-shift norm, ResBlock up/down-sampling, spatial transformers, conditioning,
    clipped x0 in the sampler, another parameterisation or schedule."""
    for name, table in (("unetconfig", _UNSUPPORTED_UNET), ("ddpmconfig", _UNSUPPORTED_DDPM)):
        section = official_entry(official, name) or {}
        for key, value in table.items():
            if key in section and section[key] != value:
                raise CheckpointError(f"official {name}.{key} = {section[key]!r}: ddmi computes only "
                                      f"{key} = {value!r} (the setting of every released DDMI config)")


def _legacy_order(official: Mapping | None) -> bool:
    """Whether the qkv rows are in the legacy ``(heads, 3, head_dim)`` order (``QKVAttentionLegacy``, the
    ADM default ``use_new_attention_order: False``); the new order is ddmi's ``(3, heads, head_dim)``."""
    u = official_entry(official, "unetconfig") or {}
    return not bool(u.get("use_new_attention_order", False))


def _head_channels(official: Mapping | None, cfg) -> int:
    """The official ``num_head_channels`` (shapes do not tell): the YAML's ``unetconfig`` if given,
    else ``cfg.ldm.unet.num_head_channels``."""
    u = official_entry(official, "unetconfig")
    if u is not None:
        nhc = int(u.get("num_head_channels", -1))
        if nhc <= 0:
            raise CheckpointError("official unetconfig sets num_heads instead of num_head_channels: "
                                  "ddmi's UNet sizes its heads by num_head_channels only")
        return nhc
    return int(cfg.ldm.unet.num_head_channels)


def official_ldm_config(diffusion: Mapping[str, torch.Tensor], cfg, official: Mapping | None = None) -> dict:
    """Config overrides (nested dict) under which ddmi's diffusion model of ``cfg`` computes the
    official DDPM ``diffusion`` (the ``diffusion`` section, or ``ema.ema_model.*`` without prefix).

    Sets ``ldm.unet.*`` from the shapes (heads: see :func:`_head_channels`), ``ldm.mixed_prediction``
    (whether ``mixing_logit`` exists), ``ldm.latent_scale = 1`` (the official LDM diffuses raw
    latents: no standardisation, no shift) and, for the tri-plane UNet, ``video.unet_cross_heads = 16``.
    No other switch is needed: ddmi's UNet, mixing, loss and DDIM compute the official functions
    (docs/official-checkpoints.md, "Stage 2").
    With ``official``, the sampler becomes the official one (DDIM with ``ddpmconfig.sampling_timesteps``
    steps, or the ancestral sampler when that is the full T) and the EMA settings those of
    ``loss_config`` (``ema_decay``, ``ema_update_every``; ``ema_after`` is always ema-pytorch's 100).
    A contradiction between the shapes and ``official`` is a :class:`CheckpointError`.
    """
    sizes = infer_unet(diffusion)
    check_schedule(diffusion)
    _check_official_options(official)
    u = official_entry(official, "unetconfig")
    if u is not None:
        for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks"):
            if key in u and int(u[key]) != sizes[key]:
                raise CheckpointError(f"official unetconfig.{key} = {u[key]} but the weights have {sizes[key]}")
        if "channel_mult" in u and [int(m) for m in u["channel_mult"]] != sizes["channel_mult"]:
            raise CheckpointError(f"official unetconfig.channel_mult = {list(u['channel_mult'])} but the "
                                  f"weights have {sizes['channel_mult']}")
        if "attention_resolutions" in u:
            possible = {2 ** i for i in range(len(sizes["channel_mult"]))}
            declared = sorted({int(a) for a in u["attention_resolutions"]} & possible, reverse=True)
            if declared != sizes["attention_resolutions"]:
                raise CheckpointError(f"official unetconfig.attention_resolutions = {list(u['attention_resolutions'])}"
                                      f" but the weights have attention at {sizes['attention_resolutions']}")
    if sizes["in_channels"] != sizes["out_channels"]:
        raise CheckpointError(f"official UNet maps {sizes['in_channels']} to {sizes['out_channels']} channels; "
                              "an epsilon network keeps the latent's channels")
    nhc = _head_channels(official, cfg)
    unet = dict(model_channels=sizes["model_channels"], channel_mult=sizes["channel_mult"],
                num_res_blocks=sizes["num_res_blocks"], attention_resolutions=sizes["attention_resolutions"] or [],
                num_head_channels=nhc)
    if u is not None and "dropout" in u:
        unet["dropout"] = float(u["dropout"])
    ldm: dict = dict(unet=unet, mixed_prediction="mixing_logit" in diffusion, latent_scale="1")
    d = official_entry(official, "ddpmconfig")
    if d is not None:
        if "mixed_init" in d:
            ldm["mixed_init"] = float(d["mixed_init"])
        steps = int(d.get("sampling_timesteps", DDMI_SCHEDULE[0]))
        ldm["sampler"], ldm["sample_steps"] = ("ddim", steps) if steps < DDMI_SCHEDULE[0] else ("ddpm", steps)
    # training continued from an import averages like ema_pytorch.EMA(beta, update_every) with the
    # library's update_after_step = 100
    ldm["ema_after"] = 100
    train = official_entry(official, "loss_config")
    if train is not None:
        if "ema_decay" in train:
            ldm["ema_decay"] = float(train["ema_decay"])
        if "ema_update_every" in train:
            ldm["ema_every"] = int(train["ema_update_every"])
    out: dict = {"ldm": ldm}
    if sizes["triplane"]:
        out["video"] = {"unet_cross_heads": OFFICIAL_TRIPLANE_HEADS}
        if u is not None and all(k in u for k in ("size1", "size2", "size3")):
            _check_triplane_sizes(cfg, (int(u["size1"]), int(u["size2"]), int(u["size3"])))
    return out


def _check_triplane_sizes(cfg, sizes: tuple[int, int, int]) -> None:
    """The official ``UNetModel_Triplane(size1, size2, size3)`` views its tokens as xy (size1, size2)
    and two time planes of size3 rows; ddmi's planes are those of the video VAE (latent side
    ``data.resolution / 2 ** (len(vae.ch_mult) - 1)``, ``video.frames`` rows; see
    ``ddmi.domains.video.model.video_spec``, not imported here: domain code imports this module)."""
    r = int(cfg.data.resolution) // 2 ** (len(cfg.vae.ch_mult) - 1)
    frames = int(cfg.video.frames)
    if (r, r, frames) != tuple(sizes):
        raise CheckpointError(f"official UNetModel_Triplane sizes (size1, size2, size3) = {tuple(sizes)} but ddmi's "
                              f"video latent planes are {r}x{r} and {frames} frames (set data.resolution, "
                              "vae.ch_mult and video.frames to the official ones)")


# ----------------------------------------------------------------------------------------------
# Schedule


def _official_schedule(T: int, beta_start: float, beta_end: float) -> dict[str, torch.Tensor]:
    """The 12 DDPM buffers (float64) of ddmi's sqrt-linear schedule, with the official formulas
    (``v_posterior = 0``)."""
    betas = linear_sqrt_betas(T, beta_start, beta_end)
    alphas = 1.0 - betas
    ac = _alphas_cumprod(betas)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - prev) / (1.0 - ac)
    return {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - ac), "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(), "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.log(post_var.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - ac),
    }


def check_schedule(diffusion: Mapping[str, torch.Tensor], *, rtol: float = 1e-6) -> None:
    """Check that the official schedule buffers are ddmi's schedule (T = 1000, betas =
    ``linspace(sqrt(0.0015), sqrt(0.0195), T) ** 2``): each element within ``rtol`` of the float64
    value (the official buffers are the float32 roundings of it, relative error <= 6e-8; ddmi keeps
    the same float32 ``alphas_cumprod``). Shape-only (meta) tensors are checked for shape only. A
    missing buffer or another schedule is a :class:`CheckpointError`."""
    missing = [k for k in SCHEDULE_BUFFERS if k not in diffusion]
    if missing:
        raise CheckpointError(f"the official diffusion state dict lacks the schedule buffers {missing}")
    T = DDMI_SCHEDULE[0]
    for k in SCHEDULE_BUFFERS:
        if tuple(diffusion[k].shape) != (T,):
            raise CheckpointError(f"official schedule buffer {k} has shape {tuple(diffusion[k].shape)}; ddmi's "
                                  f"schedule has T = {T} steps")
    if diffusion["betas"].is_meta:
        return
    ours = _official_schedule(*DDMI_SCHEDULE)
    for k in SCHEDULE_BUFFERS:
        theirs = diffusion[k].detach().to("cpu", torch.float64)
        err = ((theirs - ours[k]).abs() / ours[k].abs().clamp_min(1e-30)).max().item()
        if not err <= rtol:   # also catches NaN
            b = diffusion["betas"].double()
            raise CheckpointError(
                f"official schedule buffer {k} differs from ddmi's (relative error {err:.3g}): ddmi's schedule is "
                f"the sqrt-linear 0.0015 -> 0.0195 with T = {T}; this checkpoint has betas {b[0].item():.6g} -> "
                f"{b[-1].item():.6g}")


# ----------------------------------------------------------------------------------------------
# Key mapping


def _legacy_qkv_to_ddmi(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Legacy QKV rows ``(heads, 3, head_dim)`` -> ddmi's ``(3, heads, head_dim)``; weight (3C, C, 1)
    -> (3C, C, 1, 1), bias (3C,) -> (3C,)."""
    rest = t.shape[1:]
    c3 = t.shape[0]
    out = t.reshape(heads, 3, c3 // (3 * heads), *rest).transpose(0, 1).reshape(c3, *rest)
    return out[..., None] if out.ndim == 3 else out


def _attention_heads(unet: Mapping[str, torch.Tensor], prefix: str, head_channels: int) -> int:
    c = int(unet[f"{prefix}.qkv.weight"].shape[1])
    if c % head_channels:
        raise CheckpointError(f"official attention {prefix} has {c} channels, not a multiple of "
                              f"num_head_channels = {head_channels}")
    return c // head_channels


def _map_unet(unet: Mapping[str, torch.Tensor], head_channels: int, *, triplane: bool,
              legacy: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official ``UNetModel`` / ``UNetModel_Triplane`` keys (without ``model.``) -> ddmi ``UNet`` /
    ``TriplaneUNet`` keys (without ``net.``): ``(state, unused official keys)``."""
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    block = r"(?:input_blocks\.\d+|middle_block|output_blocks\.\d+)\.\d+"
    for key, t in unet.items():
        if re.fullmatch(r"time_embed\.[02]\.(weight|bias)|out\.[02]\.(weight|bias)", key):
            state[key] = t
        elif m := re.fullmatch(rf"({block})\.(in_layers\.[02]|emb_layers\.1|out_layers\.[03])\.(weight|bias)", key):
            state[key] = t
        elif m := re.fullmatch(rf"({block})\.skip_connection\.(weight|bias)", key):
            state[f"{m.group(1)}.skip.{m.group(2)}"] = t
        elif re.fullmatch(rf"input_blocks\.\d+\.0\.(weight|bias)|{block}\.(op|conv)\.(weight|bias)", key):
            state[key] = t
        elif m := re.fullmatch(rf"({block})\.norm\.(weight|bias)", key):
            state[key] = t
        elif m := re.fullmatch(rf"({block})\.qkv\.(weight|bias)", key):
            heads = _attention_heads(unet, m.group(1), head_channels)
            state[key] = _legacy_qkv_to_ddmi(t, heads) if legacy else (t[..., None] if t.ndim == 3 else t)
        elif m := re.fullmatch(rf"({block})\.proj_out\.weight", key):
            state[key] = t[..., None]
        elif m := re.fullmatch(rf"({block})\.proj_out\.bias", key):
            state[key] = t
        elif triplane and (m := re.fullmatch(r"(input_attns\.\d+|mid_attn|output_attns\.\d+)\.(norm|q|k|v|proj_out)"
                                             r"\.(weight|bias)", key)):
            name = m.group(1).replace("input_attns", "input_cross").replace("output_attns", "output_cross")
            name = name.replace("mid_attn", "middle_cross")
            value = t[..., 0] if m.group(2) != "norm" and m.group(3) == "weight" else t
            state[f"{name}.{m.group(2)}.{m.group(3)}"] = value
        else:
            unused.append(key)
    return state, unused


def _identity_cross(prefix: str, channels: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """A ddmi ``CrossPlaneAttention`` that is exactly the identity (zero output projection: its
    residual adds exact zeros). The official ``UNetModel_Triplane`` has no token attention after its
    input conv (``input_attns`` starts at 1), ddmi's ``TriplaneUNet`` attends after every input
    block: this fills ddmi's ``input_cross.0`` so that it computes the official function."""
    def full(shape, value):
        return torch.full(shape, value, dtype=like.dtype, device=like.device)
    out = {f"{prefix}.norm.weight": full((channels,), 1.0), f"{prefix}.norm.bias": full((channels,), 0.0)}
    for name in ("q", "k", "v", "proj_out"):
        out[f"{prefix}.{name}.weight"] = full((channels, channels), 0.0)
        out[f"{prefix}.{name}.bias"] = full((channels,), 0.0)
    return out


def _ddpm(diffusion: Mapping[str, torch.Tensor], cfg, *, triplane: bool,
          official: Mapping | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    check_schedule(diffusion)
    sizes = infer_unet(diffusion)
    if sizes["triplane"] != triplane:
        kind = "UNetModel_Triplane" if sizes["triplane"] else "UNetModel"
        raise CheckpointError(f"the official checkpoint holds a {kind}, which is not this domain's denoiser")
    _check_official_options(official)
    unet, unused_unet = _map_unet(_unet_keys(diffusion), _head_channels(official, cfg), triplane=triplane,
                                  legacy=_legacy_order(official))
    state = {f"net.{k}": v for k, v in unet.items()}
    if triplane and not sizes["stem_cross"]:
        state.update(_identity_cross("net.input_cross.0", sizes["model_channels"], diffusion["model.out.2.weight"]))
    unused = [f"model.{k}" for k in unused_unet]
    c = sizes["in_channels"]
    like = diffusion["betas"]
    if "mixing_logit" in diffusion:
        m = diffusion["mixing_logit"]
        if m.ndim < 2 or m.shape[0] != 1 or m.shape[1] != c or any(s != 1 for s in m.shape[2:]):
            raise CheckpointError(f"official mixing_logit has shape {tuple(m.shape)}, expected (1, {c}, 1, ...)")
        state["mixing_logit"] = m.reshape(c)
    state["latent_scale"] = torch.ones(c, dtype=torch.float32, device=like.device)
    state["latent_shift"] = torch.zeros(c, dtype=torch.float32, device=like.device)
    known = {"mixing_logit", *SCHEDULE_BUFFERS}
    unused += [k for k in diffusion if not k.startswith("model.") and k not in known]
    return state, unused


def ddpm_state(diffusion: Mapping[str, torch.Tensor], cfg,
               official: Mapping | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An official ``DDPM`` state dict around a ``UNetModel`` -> the state dict of ddmi's
    ``LatentDiffusion`` (``build_diffusion(cfg, ...)`` with :func:`official_ldm_config`'s overrides):
    ``(state, unused official keys)``. Heads: ``official['unetconfig']`` or ``cfg.ldm.unet``."""
    return _ddpm(diffusion, cfg, triplane=False, official=official)


def triplane_ddpm_state(diffusion: Mapping[str, torch.Tensor], cfg,
                        official: Mapping | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """As :func:`ddpm_state`, for the video ``UNetModel_Triplane`` (ddmi's ``TriplaneUNet``)."""
    return _ddpm(diffusion, cfg, triplane=True, official=official)


# ----------------------------------------------------------------------------------------------
# EMA (ema-pytorch 0.2.1)


def split_ema(ema: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """The ``ema`` section of an official ``ldm-*.pt`` (``initted`` (1,), ``step`` (1,) int64,
    ``online_model.*``, ``ema_model.*``) -> ``(ema_model DDPM state, online DDPM state, step)``.

    The ``ema_model`` weights are the ones official sampling uses. ``initted`` must be 1 (else the
    averaged copy was never initialised). Any other key is a :class:`CheckpointError`."""
    ema_model = {k[len("ema_model."):]: v for k, v in ema.items() if k.startswith("ema_model.")}
    online = {k[len("online_model."):]: v for k, v in ema.items() if k.startswith("online_model.")}
    other = sorted(k for k in ema if not k.startswith(("ema_model.", "online_model.")) and k not in ("initted", "step"))
    if other:
        raise CheckpointError(f"unknown keys in the official ema section: {other}")
    if not ema_model:
        raise CheckpointError("the official ema section has no ema_model.* weights")
    step = 0
    if "step" in ema and not ema["step"].is_meta:
        step = int(ema["step"].reshape(-1)[0])
    if "initted" in ema and not ema["initted"].is_meta and float(ema["initted"].reshape(-1)[0]) != 1.0:
        raise CheckpointError("the official EMA was never initialised (ema.initted = 0): "
                              "its ema_model holds no average")
    return ema_model, online, step


def official_ema_state(ema: Mapping[str, torch.Tensor], cfg, *, triplane: bool | None = None,
                       official: Mapping | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                 list[str]]:
    """The official ``ema`` section as ddmi's :class:`~ddmi.training.ema.EMA` state (``ema_model.*`` =
    the mapped ``ema_model`` DDPM, ``step`` = the official update counter) and the mapped online DDPM
    (``{}`` without ``online_model.*``): ``(ema_state, online_state, unused)`` (keys prefixed as in
    the section). ``triplane``: whether the UNet is the video ``UNetModel_Triplane`` (default: from
    the keys)."""
    ema_model, online, step = split_ema(ema)
    if triplane is None:
        triplane = infer_unet(ema_model)["triplane"]
    mapped, unused = _ddpm(ema_model, cfg, triplane=triplane, official=official)
    state = {f"ema_model.{k}": v for k, v in mapped.items()}
    device = ema["step"].device if "step" in ema else torch.device("cpu")
    state["step"] = torch.tensor(step, dtype=torch.long) if device.type != "meta" else torch.empty(
        (), dtype=torch.long, device=device)
    unused = [f"ema_model.{k}" for k in unused]
    online_state: dict[str, torch.Tensor] = {}
    if online:
        online_state, online_unused = _ddpm(online, cfg, triplane=triplane, official=official)
        unused += [f"online_model.{k}" for k in online_unused]
    return state, online_state, unused


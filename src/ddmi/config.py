"""Typed configuration: schema, preset registry, YAML files and ``key=value`` overrides.

A configuration holds everything about one model family: the data, the stage-1 D2C-VAE, its
training, the stage-2 latent diffusion model and its training. Presets are YAML files shipped in
``ddmi/presets``; a preset name or a path to a YAML file selects one, and ``key=value`` overrides
(dotted keys, YAML values) adjust it. Unknown keys and wrong types are rejected with a
:class:`~ddmi.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddmi import domains
from ddmi.diffusion import SAMPLERS
from ddmi.errors import ConfigError
from ddmi.preset_files import list_presets

SAMPLER_NAMES = tuple(SAMPLERS)   # the samplers are listed once, in ddmi.diffusion


@dataclass
class DataConfig:
    dir: str | None = None          # training data folder
    test_dir: str | None = None     # optional held-out folder (reconstruction previews, rFID)
    resolution: int = 256              # encoder input size (the latent is resolution / f)
    hflip: bool = True                 # random horizontal flips
    skip_bad: bool = False             # skip unreadable files with a warning instead of failing
    num_workers: int = 0               # DataLoader worker processes


@dataclass
class VAEConfig:
    """Conv D2C-VAE (names follow the official ``ddconfig``)."""

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    z_channels: int = 128
    embed_dim: int = 64
    attn_resolutions: list[int] = field(default_factory=list)
    inter_attn_resolutions: list[int] = field(default_factory=list)  # tri-plane: cross-plane mixing
    hdbpe_resolutions: list[int] = field(default_factory=lambda: [128, 64])
    plane_channels: int = 64
    mid_attn_heads: int = 1
    dropout: float = 0.0


@dataclass
class MLPConfig:
    hidden: int = 256
    scale_embed_dim: int = 64


@dataclass
class VAELossConfig:
    kl_max: float = 0.5                # final KL weight
    kl_anneal: bool = True             # ramp the KL weight linearly from kl_const
    kl_const: float = 1e-4
    kl_anneal_portion: float = 0.9     # fraction of the run spent ramping
    sn_reg: bool = True                # NVAE spectral regulariser on the VAE convolutions
    sn_anneal: bool = True             # weight exp((1-k) ln sn_init + k ln sn_weight), k = KL weight
    sn_init: float = 5.0
    sn_weight: float = 0.1
    sn_power_iters: int = 4
    multiscale: bool = True            # train on 1x / 1.5x / 2x crops with scale injection
    lpips_weights: str | None = None  # local LPIPS weights (combined file, or the heads file
    lpips_backbone: str | None = None  # with a torchvision VGG16 file here); none -> no LPIPS
    lpips_weight: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 1000                  # optimiser steps
    batch_size: int = 8                # per process, per micro-batch
    grad_accum: int = 1                # micro-batches per optimiser step
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 0              # linear learning-rate warm-up
    cosine: bool = False               # cosine decay to min_lr after warm-up
    min_lr: float = 1e-6
    grad_clip: float = 0.0             # 0 = off
    mixed_precision: str = "no"        # no | fp16 (loss scaling) | bf16: autocast, fp32 master
                                       # weights (GPU only; CPU always runs fp32)
    tf32: bool = False                 # TF32 matmuls/convolutions on Ampere and newer GPUs
    compile: bool = False              # torch.compile the training step's module
    channels_last: bool = False        # channels-last memory format for the convolutions
    log_every: int = 10
    sample_every: int = 0              # 0 = only at the end
    eval_every: int | None = None   # cheap held-out metric: None = with the samples; 0 = off
    save_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite: int = 5             # consecutive non-finite / exploding steps tolerated before stopping
    divergence_factor: float = 1000.0  # a loss over this x the median of the last 100 is divergence
                                       # (the step is skipped, no checkpoint is written); 0 = off


@dataclass
class UNetConfig:
    model_channels: int = 224
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 6])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [8, 4, 2])
    num_head_channels: int = 32
    dropout: float = 0.0


@dataclass
class LDMConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    mixed_prediction: bool = True
    mixed_init: float = -6.0
    latent_scale: str = "auto"         # "auto": standardise each latent channel (mean, std of the
                                       # training latents); "auto-global": one 1/std; or a number
                                       # (a fixed factor; 1 = the official raw latents)
    ema_decay: float = 0.9999
    ema_every: int = 10
    ema_after: int = 100
    sampler: str = "ddim"
    sample_steps: int = 50
    cache_latents: bool = True         # (kept so older run folders load: the cache is always used)
    latent_cache_dtype: str = "float16"  # the run's latent cache (RUN/latent-cache): float16 | float32
    point_draws: int = 1               # shapes, NeRF: point-cloud draws per item in the cache (a
                                       # random one per step; costs draws x encoding and cache size)


@dataclass
class GANConfig:
    """Adversarial fine-tuning of the D2C-VAE (docs/official-code.md §4, "GAN"): PatchGAN, hinge loss, feature
    matching. Generator and discriminator steps alternate per optimiser step once started."""

    enabled: bool = False
    disc_weight: float = 1.0           # weight of the generator's adversarial term
    feature_weight: float = 1.0        # weight of the feature-matching L1 term
    generator_factor: float = 1.0      # multiplies both generator terms (official video: 500)
    start_step: int = 0                # optimiser steps of reconstruction-only training first
    disc_channels: int = 64
    disc_layers: int = 3               # stride-2 layers of the PatchGAN
    disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])


@dataclass
class DDMIConfig:
    name: str = "custom"
    domain: str = "image"
    seed: int = 0
    run_dir: str | None = None
    vae_run: str | None = None      # stage 2: the VAE run folder it was trained on
    init: str | None = None         # stage 1: start from this VAE run's weights (fresh optimiser)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ldm: LDMConfig = field(default_factory=LDMConfig)
    ldm_train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, weight_decay=0.0))


# ------------------------------------------------------------------------------------------


def config_schema(domain: str | None = None) -> DictConfig:
    """The schema: :class:`DDMIConfig` plus the config sections of the built-in domains
    (``shapes``, ``nerf``, ``video``, ``image``: every run folder's config holds them) and, for a
    plug-in ``domain``, that domain's own section."""
    schema = OmegaConf.structured(DDMIConfig)
    OmegaConf.set_struct(schema, False)
    names = [*domains.BUILTIN, *([domain] if domain and domain not in domains.BUILTIN else [])]
    for name in names:
        try:
            d = domains.get(name)
        except ConfigError:
            continue                       # an unknown domain: validate() names it
        if d.section and d.section_schema is not None and d.section not in schema:
            schema[d.section] = OmegaConf.structured(d.section_schema)
    OmegaConf.set_struct(schema, True)
    return schema


def domain_view(cfg: DictConfig) -> dict:
    """``cfg`` as a plain dict without the sections of the other domains (what ``ddmi info``
    prints)."""
    own = domains.get(cfg.domain).section
    others = {domains.get(n).section for n in domains.names()} - {own, None}
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in others}


def _read_yaml(source: str) -> tuple[dict, str]:
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} does not exist")
        text = path.read_text()
    else:
        preset = resources.files("ddmi") / "presets" / f"{source}.yaml"
        if not preset.is_file():
            raise ConfigError(f"unknown preset '{source}' (available: {', '.join(list_presets())}; "
                              "or give a path to a .yaml file)")
        text = preset.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {source}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of config keys")
    if "base" in data:  # a preset may extend another one: its keys override the base's
        base_name = data.pop("base")
        if not isinstance(base_name, str) or base_name == source:
            raise ConfigError(f"{source}: 'base' must name another preset or YAML file")
        base, _ = _read_yaml(base_name)
        data = OmegaConf.to_container(OmegaConf.merge(base, data))
    return data, source


def _dotted_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for k in node:
        value = node[k] if not OmegaConf.is_missing(node, k) else None
        keys.append(prefix + str(k))
        if isinstance(value, DictConfig):
            keys += _dotted_keys(value, f"{prefix}{k}.")
    return keys


def _explain(exc: OmegaConfBaseException, schema: DictConfig | None = None) -> str:
    """One line for a config error: an unknown key with the closest valid ones, a list given
    without brackets, a value of the wrong type."""
    import difflib
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        hint = ""
        if schema is not None and key:
            depth = str(key).count(".")
            same_depth = [k for k in _dotted_keys(schema) if k.count(".") == depth]
            close = difflib.get_close_matches(str(key), same_depth, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown config key '{key}'{hint} (`ddmi info PRESET` lists every key)"
    if "ListConfig" in msg:
        return f"bad value for config key '{key}': it takes a list; write it in brackets, e.g. {key}=[1,2,4]"
    return f"bad value for config key '{key}': {msg}"


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> nested dict with YAML-parsed values."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return tree


def load_config(source: str | dict, overrides: list[str] | dict | None = None) -> DictConfig:
    """Load a preset name, YAML path or dict, apply overrides, validate, and return it (read-only)."""
    if isinstance(source, dict):
        data, name = source, "<dict>"
    else:
        data, name = _read_yaml(source)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    domain = (overrides or {}).get("domain") or (data.get("domain") if isinstance(data, dict) else None)
    schema = config_schema(domain if isinstance(domain, str) else None)
    try:
        cfg = OmegaConf.merge(schema, data)
        if overrides:
            cfg = OmegaConf.merge(cfg, overrides)
        OmegaConf.to_container(cfg, throw_on_missing=True)
        for section in ("train", "ldm_train"):   # YAML reads a bare `no` as false
            if cfg[section].mixed_precision in ("False", "false"):
                cfg[section].mixed_precision = "no"
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{name}: {_explain(exc, schema)}") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def adversarial_domains() -> list[str]:
    return [n for n in domains.names() if domains.get(n).adversarial]


def validate(cfg: DictConfig) -> None:
    """Reject nonsense values before any work starts."""

    def check(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"bad value for config key '{key}': {why}")

    try:
        domain = domains.get(cfg.domain)
    except ConfigError as exc:
        raise ConfigError(f"bad value for config key 'domain': {exc}") from None
    f = 2 ** (len(cfg.vae.ch_mult) - 1)
    check(len(cfg.vae.ch_mult) >= 1, "vae.ch_mult", "needs at least one level")
    check(cfg.data.resolution > 0 and cfg.data.resolution % f == 0, "data.resolution",
          f"{cfg.data.resolution} is not a positive multiple of the encoder's downsampling factor {f}")
    valid_res = {cfg.data.resolution // 2 ** i for i in range(len(cfg.vae.ch_mult))}
    for r in cfg.vae.hdbpe_resolutions:
        check(r in valid_res and r != cfg.data.resolution, "vae.hdbpe_resolutions",
              f"{r} is not a decoder resolution below {cfg.data.resolution} "
              f"(choose from {sorted(valid_res - {cfg.data.resolution})})")
    for r in cfg.vae.inter_attn_resolutions:
        check(r in valid_res, "vae.inter_attn_resolutions",
              f"{r} is not a resolution of the encoder (choose from {sorted(valid_res)})")
    check(cfg.vae.plane_channels > 0 and cfg.vae.ch > 0, "vae.ch", "must be positive")
    domain.validate(cfg, check)
    for section in ("train", "ldm_train"):
        t = cfg[section]
        check(t.steps > 0, f"{section}.steps", "must be > 0")
        check(t.batch_size > 0, f"{section}.batch_size", "must be > 0")
        check(t.grad_accum > 0, f"{section}.grad_accum", "must be > 0")
        check(t.lr > 0, f"{section}.lr", "must be > 0")
        check(t.mixed_precision in ("no", "fp16", "bf16"), f"{section}.mixed_precision",
              "must be no, fp16 or bf16")
        check(t.save_every > 0, f"{section}.save_every", "must be > 0")
        check(t.log_every > 0, f"{section}.log_every", "must be > 0")
        check(t.sample_every >= 0, f"{section}.sample_every", "must be >= 0")
        check(t.eval_every is None or t.eval_every >= 0, f"{section}.eval_every", "must be >= 0 (or null)")
        check(t.keep_checkpoints >= 1, f"{section}.keep_checkpoints", "must be >= 1")
        check(t.divergence_factor == 0 or t.divergence_factor > 1, f"{section}.divergence_factor",
              "must be 0 (off) or > 1")
    check(cfg.ldm.sampler in SAMPLER_NAMES, "ldm.sampler",
          f"'{cfg.ldm.sampler}' is not one of {', '.join(SAMPLER_NAMES)}")
    check(cfg.ldm.sample_steps > 0, "ldm.sample_steps", "must be > 0")
    if cfg.ldm.latent_scale not in ("auto", "auto-global"):
        try:
            ok = float(cfg.ldm.latent_scale) > 0
        except ValueError:
            ok = False
        check(ok, "ldm.latent_scale", "must be 'auto', 'auto-global' or a positive number")
    check(0 < cfg.ldm.ema_decay < 1, "ldm.ema_decay", "must be in (0, 1)")
    check(cfg.ldm.latent_cache_dtype in ("float16", "float32"), "ldm.latent_cache_dtype",
          "must be float16 or float32")
    check(cfg.ldm.point_draws >= 1, "ldm.point_draws", "must be >= 1")
    check(cfg.ldm.point_draws == 1 or domain.point_clouds, "ldm.point_draws",
          f"point-cloud draws apply to the occupancy and nerf domains, not {cfg.domain}: set it to 1")
    g = cfg.gan
    check(not g.enabled or domain.adversarial, "gan.enabled",
          f"adversarial fine-tuning is available for the {' and '.join(adversarial_domains())} domains only, "
          f"not {cfg.domain}: set gan.enabled=false")
    check(g.disc_weight >= 0 and g.feature_weight >= 0, "gan.disc_weight", "weights must be >= 0")
    check(g.generator_factor >= 0, "gan.generator_factor", "must be >= 0")
    check(g.start_step >= 0, "gan.start_step", "must be >= 0")
    check(g.disc_layers >= 1 and g.disc_channels >= 1, "gan.disc_layers", "must be >= 1")
    check(len(g.disc_betas) == 2 and all(0 <= b < 1 for b in g.disc_betas), "gan.disc_betas",
          "must be two numbers in [0, 1)")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def with_overrides(cfg: DictConfig, overrides: dict) -> DictConfig:
    """A copy of a validated config with ``overrides`` (a nested dict) applied and re-validated."""
    return load_config(OmegaConf.to_container(cfg, resolve=True), overrides)


